"""lmforge.data.download against a real loopback HTTP server, and lmforge.data.archive against crafted archives."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lmforge.data.archive import MARKER, extract, is_archive
from lmforge.data.download import DownloadError, cache_path, download
from lmforge.core.errors import LmforgeError

BODY = os.urandom(200_000)
FAST = dict(backoff=0.01, timeout=5.0, progress=False)


def listing(directory: Path) -> list[str]:
    """The names in a download cache, less `.locks/` (one lock file per URL, kept: lmforge/data/download.py)."""
    return sorted(p.name for p in directory.iterdir() if p.name != ".locks")


class Server:
    """Serves BODY at every path; `script[path]` lists what to do on successive requests (the last repeats):
    "ok", "drop" (send half the body, then close), "ignore-range" (answer 200 with the whole body),
    "nolength" (no Content-Length), or an HTTP status code such as "500"."""

    def __init__(self) -> None:
        self.script: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                actions = server.script.get(self.path, ["ok"])
                action = actions.pop(0) if len(actions) > 1 else actions[0]
                if action.isdigit():
                    self.send_error(int(action))
                    return
                start = 0
                if rng and action != "ignore-range":
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(BODY):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(BODY)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}")
                else:
                    self.send_response(200)
                chunk = BODY[start:]
                if action != "nolength":
                    self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                if action == "drop":
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- download


def test_download_then_a_pinned_cache_hit_makes_no_request(server, tmp_path):
    url = server.url("/files/data.bin")
    path = download(url, tmp_path, sha256=sha(BODY), **FAST)
    assert path == cache_path(url, tmp_path) and path.name.endswith("-data.bin")
    assert path.read_bytes() == BODY
    assert listing(tmp_path) == [path.name]  # no .part left behind (no validator sent)
    assert download(url, tmp_path, sha256=sha(BODY), **FAST) == path
    assert len(server.requests) == 1
    # unpinned, from a server that sends no ETag / Last-Modified: nothing to ask with, so it downloads again
    assert download(url, tmp_path, **FAST) == path and path.read_bytes() == BODY
    assert len(server.requests) == 2


def test_corrupt_cached_file_is_downloaded_again(server, tmp_path):
    url = server.url("/data.bin")
    cache_path(url, tmp_path).write_bytes(b"not it")
    assert download(url, tmp_path, sha256=sha(BODY), **FAST).read_bytes() == BODY
    assert len(server.requests) == 1


def test_resumes_with_range_after_dropped_connection(server, tmp_path):
    server.script["/data.bin"] = ["drop", "ok"]
    path = download(server.url("/data.bin"), tmp_path, sha256=sha(BODY), **FAST)
    assert path.read_bytes() == BODY
    assert server.requests == [("/data.bin", None), ("/data.bin", f"bytes={len(BODY) // 2}-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.script["/data.bin"] = ["drop", "ignore-range"]
    path = download(server.url("/data.bin"), tmp_path, **FAST)
    assert path.read_bytes() == BODY  # not the first half followed by the whole body
    assert server.requests[1] == ("/data.bin", f"bytes={len(BODY) // 2}-")


def test_416_accepts_complete_leftover_part_and_restarts_a_stale_one(server, tmp_path):
    url = server.url("/data.bin")
    part = cache_path(url, tmp_path).with_name(cache_path(url, tmp_path).name + ".part")
    part.write_bytes(BODY)  # a previous run got everything but was killed before the rename
    assert download(url, tmp_path, **FAST).read_bytes() == BODY
    assert server.requests == [("/data.bin", f"bytes={len(BODY)}-")]

    url = server.url("/other.bin")
    part = cache_path(url, tmp_path).with_name(cache_path(url, tmp_path).name + ".part")
    part.write_bytes(b"x" * (len(BODY) + 10))  # longer than the file: stale
    assert download(url, tmp_path, **FAST).read_bytes() == BODY
    assert server.requests[1:] == [("/other.bin", f"bytes={len(BODY) + 10}-"), ("/other.bin", None)]


@pytest.mark.parametrize("status", ["500", "429"])
def test_transient_status_is_retried(server, tmp_path, status):
    server.script["/data.bin"] = [status, "ok"]
    assert download(server.url("/data.bin"), tmp_path, **FAST).read_bytes() == BODY
    assert len(server.requests) == 2


def test_gives_up_after_retries(server, tmp_path):
    server.script["/data.bin"] = ["503"]
    with pytest.raises(DownloadError, match="3 attempts.*503"):
        download(server.url("/data.bin"), tmp_path, retries=2, **FAST)
    assert len(server.requests) == 3
    assert not cache_path(server.url("/data.bin"), tmp_path).exists()


def test_404_fails_fast_and_leaves_nothing(server, tmp_path):
    server.script["/nope.bin"] = ["404"]
    with pytest.raises(DownloadError) as e:
        download(server.url("/nope.bin"), tmp_path, **FAST)
    assert "HTTP 404 Not Found" in e.value.message and e.value.hint
    assert len(server.requests) == 1
    assert listing(tmp_path) == []


def test_sha256_mismatch_removes_everything(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(DownloadError) as e:
        download(server.url("/data.bin"), tmp_path, sha256=wrong, **FAST)
    assert wrong in str(e.value) and sha(BODY) in str(e.value)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("action", ["ok", "nolength"])  # limit from Content-Length, and from bytes counted
def test_max_bytes_is_enforced(server, tmp_path, action):
    server.script["/data.bin"] = [action]
    with pytest.raises(DownloadError, match="limit of 1000"):
        download(server.url("/data.bin"), tmp_path, max_bytes=1000, **FAST)
    assert len(server.requests) == 1
    assert listing(tmp_path) == []
    assert download(server.url("/data.bin"), tmp_path, max_bytes=len(BODY), **FAST).read_bytes() == BODY


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/data.bin", "file:///etc/passwd", "/etc/passwd"])
def test_non_http_scheme_is_rejected(server, tmp_path, url):
    with pytest.raises(DownloadError, match="only http"):
        download(url, tmp_path, **FAST)
    assert server.requests == [] and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- archive


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tar_member(name: str, type: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type, linkname
    return info


EVIL_TARS = {
    "parent": [(tar_member("../evil"), b"pwned")],
    "absolute": [(tar_member("{tmp}/abs-evil"), b"pwned")],
    "symlink": [(tar_member("passwd", tarfile.SYMTYPE, "/etc/passwd"), None)],
    "symlink-up": [(tar_member("a/up", tarfile.SYMTYPE, "../.."), None)],
    "through-symlink": [(tar_member("up", tarfile.SYMTYPE, "."), None), (tar_member("up/x"), b"pwned")],
    "hardlink": [(tar_member("hard", tarfile.LNKTYPE, "../../etc/passwd"), None)],
    "device": [(tar_member("null", tarfile.CHRTYPE), None)],
    "fifo": [(tar_member("pipe", tarfile.FIFOTYPE), None)],
}


@pytest.mark.parametrize("kind", EVIL_TARS)
def test_malicious_tar_is_refused_and_nothing_is_extracted(tmp_path, kind):
    members = [(tar_member("ok.txt"), b"fine")]
    for info, data in EVIL_TARS[kind]:
        info.name = info.name.format(tmp=tmp_path)
        members.append((info, data))
    bad = make_tar(tmp_path / "bad.tar.gz", members)
    with pytest.raises(LmforgeError) as e:
        extract(bad, tmp_path / "out")
    assert members[-1][0].name in e.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz"]  # no dest, temp dir, or escapee


@pytest.mark.parametrize("kind", ["parent", "symlink"])
def test_malicious_zip_is_refused_and_nothing_is_extracted(tmp_path, kind):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("ok.txt", "fine")
        if kind == "parent":
            zf.writestr("../evil.txt", "pwned")
        else:
            info = zipfile.ZipInfo("passwd")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    with pytest.raises(LmforgeError, match="evil.txt" if kind == "parent" else "passwd"):
        extract(bad, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def test_good_tar_extracts_once(tmp_path):
    good = make_tar(tmp_path / "aclImdb_v1.tar.gz", [
        (tar_member("aclImdb", tarfile.DIRTYPE), None),
        (tar_member("aclImdb/train/pos/0_9.txt"), b"a great film"),
        (tar_member("aclImdb/train/neg/1_2.txt"), b"dreadful"),
        (tar_member("aclImdb/latest", tarfile.SYMTYPE, "train"), None),  # links inside are fine
    ])
    assert is_archive(good) and is_archive(Path("x.zip")) and not is_archive(Path("x.txt"))
    dest = tmp_path / "imdb"
    assert extract(good, dest) == dest
    assert (dest / "aclImdb/train/pos/0_9.txt").read_text() == "a great film"
    assert (dest / "aclImdb/latest/neg/1_2.txt").read_text() == "dreadful"
    assert (dest / MARKER).is_file()

    (dest / "sentinel").touch()
    assert extract(good, dest) == dest
    assert (dest / "sentinel").exists()  # second call was a no-op

    os.utime(good, ns=(0, 0))  # the archive changed: extract again, replacing the old tree
    extract(good, dest)
    assert not (dest / "sentinel").exists() and (dest / "aclImdb/train/neg/1_2.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aclImdb_v1.tar.gz", "imdb"]


def test_refuses_to_overwrite_a_directory_it_did_not_make(tmp_path):
    good = make_tar(tmp_path / "a.tar", [(tar_member("x.txt"), b"x")])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/keep.txt").write_text("precious")
    with pytest.raises(LmforgeError, match="not made by lmforge"):
        extract(good, tmp_path / "mine")
    assert (tmp_path / "mine/keep.txt").read_text() == "precious"
