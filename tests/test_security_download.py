"""Downloads against hostile or changing loopback servers: size caps on the pipeline's path, If-Range resumes
that never splice two versions of a file, redirects to http(s) only, userinfo sent as Basic auth and never
logged, and ${NAME} read from the environment at download time."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from lmforge.core.config import DataConfig
from lmforge.data.download import DownloadError, cache_path, download
from lmforge.data.sources import acquire, acquire_for
from lmforge.core.errors import LmforgeError
from test_download import listing
from test_bad_input import restore_log_streams  # noqa: F401 - autouse: Prefect's handlers outlive capsys

FAST = dict(backoff=0.01, timeout=5.0, progress=False)
OLD, NEW = os.urandom(100_000), os.urandom(120_000)  # two versions of one file


class Server:
    """A loopback HTTP server; `routes[path]` is a function(handler) answering one GET. Every request's path and
    headers are kept in `requests`."""

    def __init__(self) -> None:
        self.routes: dict = {}
        self.requests: list[tuple[str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers)))
                route = server.routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_error(404)
                else:
                    route(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.origin + path


@pytest.fixture
def server():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


other_server = server  # a second origin, for redirects across origins


def send(h: BaseHTTPRequestHandler, body: bytes, status: int = 200, headers: dict | None = None,
         cut: int | None = None) -> None:
    """Answer with `body`; `cut` sends only that many bytes of it, then drops the connection."""
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body[:cut] if cut is not None else body)
    if cut is not None:
        h.close_connection = True


class Versioned:
    """A file that changes between requests: `versions` [(body, validators)], one per request (the last repeats).
    Honours Range and, when `honour_if_range`, If-Range (RFC 9110: the rest only if the validator still matches,
    else the whole current file with 200). `cut_first` drops the first answer half way."""

    def __init__(self, versions, honour_if_range: bool = True, cut_first: bool = True):
        self.versions, self.honour, self.cut_first, self.n = list(versions), honour_if_range, cut_first, 0

    def __call__(self, h: BaseHTTPRequestHandler) -> None:
        body, validators = self.versions[min(self.n, len(self.versions) - 1)]
        first = self.n == 0
        self.n += 1
        rng, if_range = h.headers.get("Range"), h.headers.get("If-Range")
        current = {validators.get("ETag"), validators.get("Last-Modified")} - {None}
        if (h.headers.get("If-None-Match") or h.headers.get("If-Modified-Since")) in current:
            h.send_response(304)  # RFC 9110 13.1.2: unchanged, no body
            h.end_headers()
        elif rng and (not self.honour or if_range is None or if_range in current):
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            send(h, body[start:], 206, {**validators, "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
        else:
            send(h, body, 200, validators, cut=len(body) // 2 if first and self.cut_first else None)


def test_etag_change_between_attempts_gives_the_new_file_whole(server, tmp_path):
    """The first attempt drops half way through OLD; the file is NEW by the resume. If-Range carries OLD's ETag,
    the server answers 200 with NEW, and NEW is written from zero: not OLD's first half + NEW's tail."""
    server.routes["/f"] = Versioned([(OLD, {"ETag": '"v1"'}), (NEW, {"ETag": '"v2"'})])
    path = download(server.url("/f"), tmp_path, **FAST)
    assert path.read_bytes() == NEW
    (_, first), (_, resume) = server.requests
    assert "Range" not in first
    assert resume["Range"] == f"bytes={len(OLD) // 2}-" and resume["If-Range"] == '"v1"'
    # no .part, no .part.validator; NEW's validator kept beside it, to ask the server with next time
    assert listing(tmp_path) == [path.name, path.name + ".validator"]


def test_server_ignoring_if_range_but_naming_a_new_etag_restarts_from_zero(server, tmp_path):
    server.routes["/f"] = Versioned([(OLD, {"ETag": '"v1"'}), (NEW, {"ETag": '"v2"'})], honour_if_range=False)
    assert download(server.url("/f"), tmp_path, **FAST).read_bytes() == NEW
    assert [("Range" in h, h.get("If-Range")) for _, h in server.requests] == [(False, None), (True, '"v1"'),
                                                                              (False, None)]


def test_unchanged_etag_resumes_with_if_range(server, tmp_path):
    server.routes["/f"] = Versioned([(OLD, {"ETag": '"v1"'})])
    assert download(server.url("/f"), tmp_path, **FAST).read_bytes() == OLD
    assert server.requests[1][1]["If-Range"] == '"v1"'
    assert server.requests[1][1]["Range"] == f"bytes={len(OLD) // 2}-"


def test_last_modified_is_the_validator_when_there_is_no_etag(server, tmp_path):
    old = {"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
    new = {"Last-Modified": "Tue, 02 Jan 2024 00:00:00 GMT"}
    server.routes["/f"] = Versioned([(OLD, old), (NEW, new)])
    assert download(server.url("/f"), tmp_path, **FAST).read_bytes() == NEW
    assert server.requests[1][1]["If-Range"] == old["Last-Modified"]


def test_weak_etag_falls_back_to_last_modified(server, tmp_path):
    """If-Range needs a strong validator (RFC 9110 13.1.5): a weak ETag is not sent."""
    validators = {"ETag": 'W/"v1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
    server.routes["/f"] = Versioned([(OLD, validators)])
    assert download(server.url("/f"), tmp_path, **FAST).read_bytes() == OLD
    assert server.requests[1][1]["If-Range"] == validators["Last-Modified"]


def test_total_length_change_without_validators_restarts(server, tmp_path):
    """No ETag, no Last-Modified: a 206 whose total length differs from the first answer's is another file."""
    server.routes["/f"] = Versioned([(OLD, {}), (NEW, {})])
    assert download(server.url("/f"), tmp_path, **FAST).read_bytes() == NEW
    assert len(server.requests) == 3 and "Range" not in server.requests[2][1]


def endless(h: BaseHTTPRequestHandler) -> None:
    """No Content-Length, and bytes until the client hangs up."""
    h.send_response(200)
    h.end_headers()
    try:
        while True:
            h.wfile.write(b"\0" * 65536)
    except OSError:
        pass
    h.close_connection = True


def test_data_max_bytes_caps_an_endless_body_on_the_pipelines_path(server, tmp_path):
    server.routes["/endless"] = endless
    cfg = DataConfig(source=server.url("/endless"), max_bytes=300_000)
    with pytest.raises(DownloadError) as info:
        acquire_for(cfg, tmp_path)
    assert "exceeded the limit of 300000 bytes" in info.value.message
    assert "data.max_bytes" in info.value.hint
    assert listing(tmp_path / "downloads") == []  # nothing half-written is left


def test_default_cap_is_applied_by_acquire(server, tmp_path):
    """The 4 GiB default: a server announcing 5 GiB is refused before a byte of the body is stored."""
    def huge(h):
        h.send_response(200)
        h.send_header("Content-Length", str(5 << 30))
        h.end_headers()
        h.wfile.write(b"x" * 1000)
        h.close_connection = True

    server.routes["/huge.bin"] = huge
    with pytest.raises(DownloadError, match=f"is {5 << 30} bytes, over the limit of {4 << 30}"):
        acquire_for(DataConfig(source=server.url("/huge.bin")), tmp_path)
    with pytest.raises(DownloadError, match="over the limit"):
        acquire(server.url("/huge.bin"), tmp_path)  # the library call's default is the same
    assert listing(tmp_path / "downloads") == []


def test_over_the_cap_through_the_cli_is_one_line(prefect_server, server, capsys, tmp_path):
    server.routes["/endless"] = endless
    from lmforge.cli import main

    rc = main(["prepare", "--set", f"data.source={server.url('/endless')}", "--set", "data.max_bytes=100000",
               "--set", "data.format=lines"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: download of") and "data.max_bytes" in err[-1], err[-3:]
    assert len(server.requests) == 1  # a user's error: the acquire task does not retry it


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/corpus.txt", "gopher://x/1"])
def test_redirect_to_a_non_http_scheme_is_refused(server, tmp_path, location):
    def redirect(h):
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    server.routes["/r"] = redirect
    with pytest.raises(DownloadError) as info:
        download(server.url("/r"), tmp_path, **FAST)
    assert info.value.message == (f"download of {server.url('/r')} was redirected to {location!r}: only http:// "
                                  "and https:// redirects are followed")
    assert len(server.requests) == 1 and listing(tmp_path) == []


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_redirects_to_http_are_followed_and_credentials_stay_on_their_origin(server, other_server, tmp_path):
    body = b"the corpus\n" * 100
    server.routes["/start"] = lambda h: send(h, b"", 302, {"Location": "/same-origin"})
    server.routes["/same-origin"] = lambda h: send(h, b"", 302, {"Location": other_server.url("/elsewhere")})
    other_server.routes["/elsewhere"] = lambda h: send(h, body)
    url = server.url("/start").replace("http://", "http://alice:s3cret@")
    assert download(url, tmp_path, **FAST).read_bytes() == body
    auth = basic("alice", "s3cret")
    assert [h.get("Authorization") for _, h in server.requests] == [auth, auth]
    assert [h.get("Authorization") for _, h in other_server.requests] == [None]  # another origin: not sent


USER, PASSWORD, TOKEN = "corpus-reader", "p@ss:w/rd%" + os.urandom(4).hex(), "tok" + os.urandom(8).hex()


def guarded(body: bytes, user: str, password: str, token: str):
    """A route that answers 401 without the right Basic auth and 403 without the right ?token=."""
    def route(h: BaseHTTPRequestHandler) -> None:
        if h.headers.get("Authorization") != basic(user, password):
            send(h, b"", 401)
        elif f"token={token}" not in h.path:
            send(h, b"", 403)
        else:
            send(h, body)
    return route


def credential_url(server: Server, path: str, user: str, password: str, token: str) -> str:
    from urllib.parse import quote

    return f"http://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{server.httpd.server_address[1]}" \
           f"{path}?token={token}&lang=en"


def test_userinfo_is_sent_as_basic_auth_and_no_log_line_or_error_shows_a_secret(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="lmforge")
    body = b"why did the chicken cross the road\n" * 200
    server.routes["/jokes.txt"] = guarded(body, USER, PASSWORD, TOKEN)
    url = credential_url(server, "/jokes.txt", USER, PASSWORD, TOKEN)
    assert download(url, tmp_path, **FAST).read_bytes() == body
    with pytest.raises(DownloadError) as info:  # a failure's message: 404 from the same credentialled URL
        download(url.replace("/jokes.txt", "/missing.txt"), tmp_path, **FAST)
    server.routes["/drop.txt"] = lambda h: send(h, body, cut=100)  # retried attempts log warnings with the URL
    with pytest.raises(DownloadError) as dropped:
        download(url.replace("/jokes.txt", "/drop.txt"), tmp_path, retries=1, **FAST)
    shown = f"http://***@127.0.0.1:{server.httpd.server_address[1]}/jokes.txt?token=***&lang=en"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"downloaded {shown}" in logged and "attempt 1 of 2" in logged
    for text in (logged, str(info.value), str(dropped.value)):
        for secret in (PASSWORD, TOKEN, USER, "p%40ss"):
            assert secret not in text, (secret, text)


def test_source_reads_secrets_from_the_environment_at_download_time(server, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="lmforge")
    body = b"one two three\n" * 100
    path_secret = "p" + os.urandom(8).hex()  # a secret in the path, where no redaction rule can see it
    server.routes[f"/{path_secret}/c.txt"] = guarded(body, "reader", "pw", TOKEN)
    template = f"http://reader:${{LMFORGE_TEST_PW}}@127.0.0.1:{server.httpd.server_address[1]}" \
               "/${LMFORGE_TEST_DIR}/c.txt?token=${LMFORGE_TEST_TOKEN}"
    origin = f"http://127.0.0.1:{server.httpd.server_address[1]}"
    with pytest.raises(LmforgeError) as info:  # expansion is off until the operator names the variable and host
        acquire(template, tmp_path)
    assert info.value.message.startswith("data.source refers to ${LMFORGE_TEST_PW}, which the operator's policy")
    assert f"LMFORGE_ALLOWED_SECRETS=LMFORGE_TEST_PW@{origin}" in info.value.hint
    monkeypatch.setenv("LMFORGE_ALLOWED_SECRETS", " ".join(f"LMFORGE_TEST_{n}@{origin}" for n in ("PW", "DIR", "TOKEN")))
    with pytest.raises(LmforgeError) as info:
        acquire(template, tmp_path)
    assert info.value.message == "data.source refers to ${LMFORGE_TEST_PW}, which is not set in this worker's " \
                                 "environment"
    assert server.requests == []
    monkeypatch.setenv("LMFORGE_TEST_PW", "pw")
    monkeypatch.setenv("LMFORGE_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("LMFORGE_TEST_DIR", path_secret)
    path = acquire(template, tmp_path)
    assert path.read_bytes() == body
    assert path == cache_path(template, tmp_path / "downloads")  # named after the template, not the secrets
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/${LMFORGE_TEST_DIR}/c.txt?token=***" in logged  # the template is what the log lines show
    assert not [s for s in (TOKEN, path_secret) if s in logged or s in str(path)]


@pytest.mark.parametrize("source,why", [("http://h/x?t=${}", "which is not an environment variable name"),
                                        ("http://h/x?t=${A-B}", "which is not an environment variable name"),
                                        ("http://h/x?t=${OPEN", "has an unclosed ${")])
def test_malformed_environment_references_are_one_line(tmp_path, source, why):
    with pytest.raises(LmforgeError, match=re.escape(why)):
        acquire(source, tmp_path)


def test_validator_file_is_written_before_the_body(server, tmp_path):
    """Killed mid-body, the .part and its validator are both on disk for the next run's If-Range."""
    server.routes["/f"] = lambda h: send(h, OLD, headers={"ETag": '"v1"'}, cut=1000)
    with pytest.raises(DownloadError):
        download(server.url("/f"), tmp_path, retries=0, **FAST)
    part = cache_path(server.url("/f"), tmp_path)
    assert Path(str(part) + ".part").stat().st_size == 1000
    assert json.loads(Path(str(part) + ".part.validator").read_text())["etag"] == '"v1"'


def test_shakespeare_preset_pins_the_hash_of_char_rnns_input_txt(server, tmp_path):
    """The one preset whose bytes are known here: ../shared/corpora/tinyshakespeare.txt is char-rnn's input.txt
    (1,115,394 bytes). Served at the preset's URL path, the preset's sha256 accepts it; one changed byte is refused."""
    from conftest import corpus
    from lmforge.core.config import load_config

    text = corpus("tinyshakespeare.txt", real=True).read_bytes()  # only the real bytes have the pinned hash
    cfg = load_config("shakespeare-char")
    assert len(text) == 1_115_394 and cfg.data.sha256 == hashlib.sha256(text).hexdigest()
    path = urlparse(cfg.data.source).path
    server.routes[path] = lambda h: send(h, text)
    local = DataConfig(source=server.url(path), sha256=cfg.data.sha256)
    assert acquire_for(local, tmp_path).read_bytes() == text
    server.routes["/changed" + path] = lambda h: send(h, text[:-1] + b"?")
    with pytest.raises(DownloadError, match="is corrupt: sha256"):
        acquire_for(DataConfig(source=server.url("/changed" + path), sha256=cfg.data.sha256), tmp_path)


@pytest.mark.parametrize("validators", [{"ETag": '"v1"'}, {"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}])
def test_a_cached_url_is_asked_whether_it_changed_and_unchanged_is_not_downloaded(server, tmp_path, validators):
    server.routes["/f"] = Versioned([(OLD, validators)], cut_first=False)
    path = download(server.url("/f"), tmp_path, **FAST)
    assert download(server.url("/f"), tmp_path, **FAST) == path and path.read_bytes() == OLD
    (_, first), (_, second) = server.requests
    asked = second.get("If-None-Match") or second.get("If-Modified-Since")
    assert asked == next(iter(validators.values())) and "If-None-Match" not in first


def test_a_cached_url_whose_content_changed_is_downloaded_again(server, tmp_path, caplog):
    """A nightly source: same URL, new content. The next run gets the new file, not yesterday's copy."""
    server.routes["/f"] = Versioned([(OLD, {"ETag": '"v1"'}), (NEW, {"ETag": '"v2"'})], cut_first=False)
    assert download(server.url("/f"), tmp_path, **FAST).read_bytes() == OLD
    with caplog.at_level(logging.INFO, logger="lmforge.download"):
        assert download(server.url("/f"), tmp_path, **FAST).read_bytes() == NEW
    assert "changed since it was cached" in caplog.text
    assert download(server.url("/f"), tmp_path, **FAST).read_bytes() == NEW  # v2 kept: asked with "v2", 304
    assert server.requests[-1][1]["If-None-Match"] == '"v2"'


def test_an_unreachable_server_leaves_the_cached_copy_in_use_with_a_warning(server, tmp_path, caplog):
    server.routes["/f"] = Versioned([(OLD, {"ETag": '"v1"'})], cut_first=False)
    url = server.url("/f")
    path = download(url, tmp_path, **FAST)
    server.httpd.shutdown()
    server.httpd.server_close()
    with caplog.at_level(logging.WARNING, logger="lmforge.download"):
        assert download(url, tmp_path, **FAST) == path and path.read_bytes() == OLD
    assert "could not ask" in caplog.text and "using the copy cached at" in caplog.text
