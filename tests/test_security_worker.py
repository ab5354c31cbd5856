"""A shared worker that whoever triggers a run cannot turn against its operator (docs/security.md), tried as an
attacker would, on real parts: loopback HTTP servers that redirect, trickle and record every request; a real
Prefect deployment run executed as a process worker executes it (`python -m prefect.engine`); crafted tar, CSV and
text files measured for peak RSS in a child process; two processes downloading one URL at once; the real CLI."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import time
import zlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from conftest import REPO
from lmforge.core import policy as policy_mod
from lmforge.core.config import load_config
from lmforge.core.errors import LmforgeError
from lmforge.data.archive import extract
from lmforge.data.download import DownloadError, download
from lmforge.data.formats import read_documents, split_text
from lmforge.data.sources import acquire
from test_bad_input import restore_log_streams  # noqa: F401 - autouse: Prefect's handlers outlive capsys
from test_download import listing
from test_security_download import FAST, Server, send

SECRET = "s3cr3t-" + os.urandom(8).hex()


@pytest.fixture
def a():
    s = Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


b = a  # a second origin (another port on 127.0.0.1)


def no_secret_reached(*servers: Server) -> bool:
    return not any(SECRET in path or SECRET in str(headers) for s in servers for path, headers in s.requests)


def one_line(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err and err[-1].startswith("error: ") and "(hint: " in err[-1], err[-5:]
    for needle in needles:
        assert needle in err[-1], (needle, err[-1])
    return err[-1]


# --- the policy: sources, addresses, ${NAME} -------------------------------------------------------------------

def test_without_a_policy_a_local_run_reads_files_and_public_urls_but_no_loopback_address(a, tmp_path,
                                                                                           monkeypatch):
    monkeypatch.delenv("LMFORGE_ALLOWED_ADDRESSES")  # the suite's own allowance (conftest.py)
    pol = policy_mod.load()
    assert pol.origin == "the default policy" and not pol.deployment
    (tmp_path / "c.txt").write_text("a local corpus\n")
    assert acquire(str(tmp_path / "c.txt"), tmp_path / "cache") == tmp_path / "c.txt"
    pol.check_source("https://example.org/corpus.txt")  # a public URL: allowed (its address is checked later)
    a.routes["/c.txt"] = lambda h: send(h, b"hello\n")
    for url in (a.url("/c.txt"), a.url("/c.txt").replace("127.0.0.1", "localhost")):  # a name resolving to it
        with pytest.raises(DownloadError) as info:
            acquire(url, tmp_path / "cache")
        assert "a loopback address, which the default policy does not allow" in info.value.message
        assert "LMFORGE_ALLOWED_ADDRESSES=loopback" in info.value.hint
    assert a.requests == []  # refused before connecting: the address is checked, then connected to


def test_a_secret_is_sent_only_to_the_host_the_operator_names(a, b, tmp_path, monkeypatch):
    """${NAME} is off for every variable the policy does not name for the URL's host; the servers record no
    secret for every refused case (and record it for the one allowed case: the check can see it)."""
    monkeypatch.setenv("LMFORGE_SOURCE_TOKEN", SECRET)
    monkeypatch.setenv("LMFORGE_USER", f"x@127.0.0.1:{b.httpd.server_address[1]}/#")  # would move the host
    a.routes["/c.txt"] = b.routes["/c.txt"] = lambda h: send(h, b"hello\n")
    token_a = a.url("/c.txt?token=${LMFORGE_SOURCE_TOKEN}")
    with pytest.raises(LmforgeError, match=r"refers to \$\{LMFORGE_SOURCE_TOKEN\}, which the operator's policy"):
        acquire(token_a, tmp_path)  # expansion is off until the operator names the variable, even locally
    monkeypatch.setenv("LMFORGE_ALLOWED_SECRETS", f"LMFORGE_SOURCE_TOKEN@{a.origin} LMFORGE_USER@{a.origin}")
    port_a, port_b = a.httpd.server_address[1], b.httpd.server_address[1]
    refused = {
        b.url("/c.txt?token=${LMFORGE_SOURCE_TOKEN}"): "does not allow to be sent to 127.0.0.1:%d" % port_b,
        f"http://127.0.0.1:{port_b}/c.txt?t=${{LMFORGE_SOURCE_TOKEN}}": "does not allow to be sent",
        "http://${LMFORGE_SOURCE_TOKEN}.example/c.txt": "in its host or port, which is never expanded",
        f"http://127.0.0.1:${{LMFORGE_SOURCE_TOKEN}}/c.txt": "in its host or port",
        f"http://${{LMFORGE_USER}}@127.0.0.1:{port_a}/c.txt": "changes where",
        f"https://127.0.0.1:{port_a}/c.txt?t=${{LMFORGE_SOURCE_TOKEN}}": "does not allow",  # another scheme
        f"{tmp_path}/${{LMFORGE_SOURCE_TOKEN}}": "to be sent to local",
    }
    for source, why in refused.items():
        with pytest.raises(LmforgeError) as info:
            acquire(source, tmp_path)
        assert why in info.value.message, (source, info.value.message)
        assert SECRET not in str(info.value)
    assert a.requests == [] and b.requests == []
    assert acquire(token_a, tmp_path).read_bytes() == b"hello\n"  # the one allowed: host, port and scheme
    assert a.requests[-1][0] == f"/c.txt?token={SECRET}" and no_secret_reached(b)


def test_every_redirect_hop_is_checked_against_the_policy(a, b, tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_ALLOWED_SOURCES", f"{a.origin}/ok/")
    monkeypatch.setenv("LMFORGE_ALLOWED_SECRETS", f"LMFORGE_SOURCE_TOKEN@{a.origin}")
    monkeypatch.setenv("LMFORGE_SOURCE_TOKEN", SECRET)
    a.routes["/ok/c.txt"] = lambda h: send(h, b"hello\n")
    b.routes["/c.txt"] = lambda h: send(h, b"from b\n")
    hops = {"/ok/to-b": b.url("/c.txt"), "/ok/to-other-path": a.url("/private/c.txt"),
            "/ok/to-metadata": "http://169.254.169.254/latest/meta-data/",
            "/ok/to-localhost": a.url("/ok/c.txt").replace("127.0.0.1", "localhost"),
            "/ok/to-file": "file:///etc/passwd"}
    for path, location in hops.items():
        a.routes[path] = lambda h, loc=location: send(h, b"", 302, {"Location": loc})
    pol = policy_mod.load(deployment=True)
    for path in hops:
        with pytest.raises(DownloadError) as info:
            acquire(a.url(path + "?token=${LMFORGE_SOURCE_TOKEN}"), tmp_path, policy=pol)
        assert "refused: a redirect" in info.value.message or "redirected to" in info.value.message, info.value
        assert SECRET not in str(info.value)
    assert b.requests == []  # no hop reached the other origin
    assert acquire(a.url("/ok/c.txt"), tmp_path, policy=pol).read_bytes() == b"hello\n"
    with pytest.raises(LmforgeError, match="is not allowed by the operator's policy"):
        acquire(b.url("/c.txt"), tmp_path, policy=pol)  # a host outside the list, in a deployment run


def test_link_local_and_private_targets_are_refused_even_when_a_redirect_leads_there(a, tmp_path):
    a.routes["/r"] = lambda h: send(h, b"", 302, {"Location": "http://169.254.169.254/latest/meta-data/"})
    with pytest.raises(DownloadError) as info:
        download(a.url("/r"), tmp_path, **FAST)
    assert "169.254.169.254 resolves to 169.254.169.254, a link-local address" in info.value.message
    assert "LMFORGE_ALLOWED_ADDRESSES=link-local" in info.value.hint
    pol = policy_mod.load({"LMFORGE_ALLOWED_ADDRESSES": "loopback"})
    for ip, kind in (("10.0.0.1", "private"), ("192.168.1.1", "private"), ("100.64.0.1", "private"),
                     ("::ffff:169.254.169.254", "link-local"), ("0.0.0.0", "loopback"), ("fd00::1", "private")):
        if kind == "loopback":
            pol.check_address("h", ip)
            continue
        with pytest.raises(policy_mod.PolicyError, match=f"a {kind} address"):
            pol.check_address("h", ip)


def test_a_deployment_run_refuses_what_the_default_policy_does_not_allow(tmp_path):
    pol = policy_mod.load({}, deployment=True)
    (tmp_path / "c.txt").write_text("x\n")
    cases = {str(tmp_path / "c.txt"): f"LMFORGE_ALLOWED_SOURCES={tmp_path}", "/etc/passwd": "=/etc",
             "~/.ssh/id_rsa": "LMFORGE_ALLOWED_SOURCES=", "http://example.org/c.txt": "=http://example.org/",
             "s3://bucket/key": "=s3://bucket/"}
    for source, hint in cases.items():
        with pytest.raises(policy_mod.PolicyError, match="for a deployment run") as info:
            load_config("jokes-char", {"data.source": source}, pol)  # refused when the flow loads its config
        assert hint in info.value.hint
    load_config("jokes-char", {"data.source": "https://example.org/c.txt"}, pol)  # public https: allowed
    with pytest.raises(LmforgeError, match="model.pretrained .* is a local path"):
        load_config("jokes-gpt2", {"model.pretrained": "/home"}, pol)
    (tmp_path / "p.toml").write_text('[data]\nsource = "pyjokes"\n')
    with pytest.raises(LmforgeError, match="outside the presets directory"):
        load_config(str(tmp_path / "p.toml"), None, pol)
    allowed = policy_mod.load({"LMFORGE_ALLOWED_SOURCES": str(tmp_path)}, deployment=True)
    assert load_config("jokes-char", {"data.source": str(tmp_path / "c.txt")}, allowed).data.source
    os.symlink("/etc/passwd", tmp_path / "link.txt")  # a symlink inside an allowed root, pointing out
    with pytest.raises(LmforgeError, match="is a local path"):
        load_config("jokes-char", {"data.source": str(tmp_path / "link.txt")}, allowed)


def test_the_policy_file_and_its_errors(tmp_path):
    f = tmp_path / "policy.toml"
    f.write_text('[sources]\nallow = ["https://huggingface.co/datasets/"]\naddresses = ["10.0.0.0/8"]\n'
                 '[secrets]\nHF_TOKEN = "huggingface.co"\n[ceilings]\n"data.max_bytes" = 1000\n"train.nproc" = 2\n')
    pol = policy_mod.load({"LMFORGE_POLICY": str(f)}, deployment=True)
    pol.check_source("https://huggingface.co/datasets/x/resolve/main/a.txt")
    pol.check_address("h", "10.1.2.3")
    assert pol.ceiling("data.max_bytes") == 1000 and pol.ceiling("train.nproc") == 2
    assert pol.expand("https://huggingface.co/x?t=${HF_TOKEN}", environ={"HF_TOKEN": "v"}).endswith("t=v")
    for text, why in (('[sources]\nallow = "x"', "must be a list"), ("[other]\n", "unknown table"),
                      ('[ceilings]\n"data.max_bytes" = 0', "must be a number > 0"),
                      ('[ceilings]\n"x.y" = 1', "unknown ceiling"), ("not toml", "cannot read the policy file"),
                      ('[sources]\naddresses = ["everything"]', "is not loopback")):
        f.write_text(text)
        with pytest.raises(policy_mod.PolicyError, match=why):
            policy_mod.load({"LMFORGE_POLICY": str(f)})
    with pytest.raises(policy_mod.PolicyError, match="cannot read the policy file"):
        policy_mod.load({"LMFORGE_POLICY": str(tmp_path / "missing.toml")})  # fails closed, never the defaults


# --- ceilings and config validation through the real CLI ------------------------------------------------------

@pytest.mark.parametrize("sets,needle", [
    (["export.top_k=-3"], "export.top_k must be >= 0"), (["export.top_p=7"], "export.top_p must be in (0, 1]"),
    (["export.temperature=-1"], "export.temperature must be >= 0"), (["eval.temperatures=[1,-1]"], "eval.tempera"),
    (["data.max_bytes=0"], "0 no longer lifts a limit"), (["data.archive_max_members=0"], "0 no longer lifts"),
    (["data.max_bytes=99999999999"], "over the operator's ceiling 4294967296"),
    (["train.nproc=1000"], "train.nproc=1000 is over the operator's ceiling 16"),
    (["data.parts=100000"], "data.parts=100000 is over"), (["train.threads=100000"], "train.threads=100000 is over"),
    (["model.n_layer=90", "model.n_embd=8192"], "weights (from model.* and tokenizer.vocab_size), over the"),
    (["eval.max_new_tokens=1000000000"], "eval.max_new_tokens=1000000000 is over"),
    (["data.max_record_chars=-1"], "must be > 0")])
def test_triggerer_settings_past_a_ceiling_are_one_line_before_prefect(capsys, sets, needle):
    from lmforge.cli import main

    one_line(capsys, main(["prepare", *[w for s in sets for w in ("--set", s)]]), needle)


def test_the_operator_lowers_a_ceiling_and_the_preset_follows_it(monkeypatch):
    monkeypatch.setenv("LMFORGE_CEILINGS", "data.max_bytes=1000000 train.nproc=2 data.max_seconds=60")
    cfg = load_config("shakespeare-char")
    assert cfg.data.max_bytes == 1_000_000 and cfg.data.max_seconds == 60  # lowered to the ceiling, silently
    assert load_config("shakespeare-char", {"data.max_bytes": "500"}).data.max_bytes == 500  # lower: fine
    with pytest.raises(LmforgeError, match="data.max_bytes=2000000 is over the operator's ceiling 1000000"):
        load_config("shakespeare-char", {"data.max_bytes": "2000000"})
    with pytest.raises(LmforgeError, match="train.nproc=4 is over"):
        load_config("shakespeare-char", {"train.nproc": "4"})


# --- time: trickles, devices, FIFOs --------------------------------------------------------------------------

def trickle(h: BaseHTTPRequestHandler) -> None:
    """Headers, then one byte every 0.2 s: each read well inside any socket timeout, the whole never ending."""
    h.send_response(200)
    h.send_header("Content-Length", str(10 << 20))
    h.end_headers()
    try:
        while True:
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.2)
    except OSError:
        pass


def trickle_headers(h: BaseHTTPRequestHandler) -> None:
    try:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 1000:
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            time.sleep(0.2)
    except OSError:
        pass
    h.close_connection = True


def test_a_trickling_server_ends_with_one_line_through_the_cli(prefect_server, a, capsys):
    from lmforge.cli import main

    a.routes["/slow.txt"] = trickle
    rc = main(["prepare", "--set", f"data.source={a.url('/slow.txt')}", "--set", "data.max_seconds=2",
               "--set", "data.format=lines"])
    one_line(capsys, rc, "took longer than data.max_seconds=2", "raise data.max_seconds")
    assert len(a.requests) == 1  # a deadline is a definite answer: no retry


def test_trickled_headers_end_at_the_deadline_too(a, tmp_path):
    a.routes["/h"] = trickle_headers
    with pytest.raises(DownloadError, match="took longer than data.max_seconds=1"):
        download(a.url("/h"), tmp_path, max_seconds=1, **FAST)
    assert listing(tmp_path) == []


def test_dev_zero_ends_with_one_line_and_leaves_the_data_lock_free(prefect_server, capsys):
    from lmforge.cli import main

    for _ in range(2):  # the second, with --no-wait, would say "in use" if the first had kept the lock
        rc = main(["prepare", "--no-wait", "--set", "data.source=/dev/zero", "--set", "data.format=lines"])
        one_line(capsys, rc, "/dev/zero is not a regular file or a directory")


def test_a_fifo_or_device_inside_a_corpus_directory_is_one_line(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("fine\n")
    os.mkfifo(tmp_path / "d" / "b.txt")  # nothing ever writes it: opening it for reading would wait forever
    with pytest.raises(LmforgeError, match="b.txt is not a regular file"):
        read_documents(tmp_path / "d", "lines")
    os.remove(tmp_path / "d" / "b.txt")
    os.symlink("/dev/zero", tmp_path / "d" / "b.txt")
    with pytest.raises(LmforgeError, match="b.txt is not a regular file"):
        read_documents(tmp_path / "d", "lines")


# --- memory: crafted inputs, peak RSS of a child process -----------------------------------------------------

CHILD = """
import re, sys
from pathlib import Path
from lmforge.core.errors import LmforgeError
from lmforge.data.archive import extract
from lmforge.data.formats import read_documents
def peak():  # this process's own high-water mark (ru_maxrss would carry the parent's across exec)
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024
kind, path = sys.argv[1], Path(sys.argv[2])
before = peak()
try:
    if kind == "tar":
        extract(path, path.parent / "out")
    else:
        read_documents(path, kind, column="text" if kind == "csv" else "")
    message = "read"
except LmforgeError as e:
    message = str(e)
print(f"{peak() - before:.0f}", message)
"""
BOUND_MB = 100  # measured: +21 MB (text), +31 MB (CSV), +0 (tar); before this change +606 MB for the CSV


def crafted_tar(path: Path, kind: bytes, size: int) -> Path:
    """A .tar.gz whose first header is a GNU long name (L) or a PAX header (x) of `size` bytes, then one small
    member: ~300 KB on disk for 300 MB of header, streamed so the test never holds it."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    meta = tarfile.TarInfo("././@LongLink" if kind == tarfile.GNUTYPE_LONGNAME else "././@PaxHeader")
    meta.type, meta.size = kind, size
    member = tarfile.TarInfo("doc.txt")
    member.size = 5
    with open(path, "wb") as f:
        f.write(z.compress(meta.tobuf(tarfile.GNU_FORMAT)))
        block = b"a" * (1 << 20)
        for _ in range(size >> 20):
            f.write(z.compress(block))
        f.write(z.compress(member.tobuf(tarfile.GNU_FORMAT) + b"hello".ljust(512, b"\0") + b"\0" * 1024))
        f.write(z.flush())
    return path


def big_file(path: Path, head: bytes, fill: bytes, mb: int, tail: bytes = b"") -> Path:
    with open(path, "wb") as f:
        f.write(head)
        block = fill * ((1 << 20) // len(fill))
        for _ in range(mb):
            f.write(block)
        f.write(tail)
    return path


@pytest.mark.parametrize("kind,make", [
    ("tar", lambda d: crafted_tar(d / "pax.tar.gz", tarfile.XHDTYPE, 300 << 20)),
    ("tar", lambda d: crafted_tar(d / "gnu.tar.gz", tarfile.GNUTYPE_LONGNAME, 300 << 20)),
    ("csv", lambda d: big_file(d / "field.csv", b'id,text\n1,"', b"x", 200, b'"\n')),
    ("text", lambda d: big_file(d / "noblank.txt", b"", b"a line of text and no blank line after it\n", 200))],
    ids=["pax-header", "gnu-long-name", "one-200MB-csv-field", "200MB-text-without-blank-lines"])
def test_crafted_inputs_stay_under_a_fixed_memory_bound(tmp_path, kind, make):
    path = make(tmp_path)
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, kind, str(path)], capture_output=True, text=True,
                           timeout=600, cwd=REPO)
    finally:
        path.unlink()
    assert r.returncode == 0, r.stderr[-2000:]
    grew, message = r.stdout.strip().split(" ", 1)
    assert int(grew) < BOUND_MB, (grew, message)
    assert re.search(r"extended header of \d+ bytes|longer than data.max_record_chars", message), message


def test_tar_names_too_long_or_too_many_extended_headers_are_refused(tmp_path):
    long_name = tmp_path / "long.tar"
    with tarfile.open(long_name, "w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("d" * 300 + "/x.txt")  # a component past NAME_MAX: was a raw OSError
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(LmforgeError, match="has a name longer than a file system takes"):
        extract(long_name, tmp_path / "out")
    chain = tmp_path / "chain.tar"
    with open(chain, "wb") as f:  # ten GNU long-name headers in a row (tarfile recurses through them)
        for i in range(10):
            meta = tarfile.TarInfo("././@LongLink")
            meta.type, meta.size = tarfile.GNUTYPE_LONGNAME, 6
            f.write(meta.tobuf(tarfile.GNU_FORMAT) + f"name{i}\0".encode().ljust(512, b"\0"))
        member = tarfile.TarInfo("x.txt")
        f.write(member.tobuf(tarfile.GNU_FORMAT) + b"\0" * 1024)
    with pytest.raises(LmforgeError, match="follows more than 8 extended headers in a row"):
        extract(chain, tmp_path / "out2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.tar", "long.tar"]  # nothing half-extracted


def test_an_over_long_record_through_the_cli_is_one_line(prefect_server, tmp_path, capsys):
    from lmforge.cli import main

    big_file(tmp_path / "t.csv", b'text\n"', b"y", 1, b'"\n')
    rc = main(["prepare", "--set", f"data.source={tmp_path / 't.csv'}", "--set", "data.column=text",
               "--set", "data.format=csv",
               "--set", "data.max_record_chars=100000"])
    one_line(capsys, rc, "is longer than data.max_record_chars=100000", "raise data.max_record_chars")


def test_the_text_splitter_matches_one_split_of_the_whole_text():
    """The splitter searches each character once; its documents are those of one str.split of the whole text,
    for every way of cutting the text into reads (separators and CRLF across read boundaries included)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=400, deadline=None)
    @hypothesis.given(st.text(alphabet="ab \r\n<|e>", max_size=60), st.lists(st.integers(0, 60), max_size=8),
                      st.sampled_from(["text", "lines"]), st.sampled_from(["", "<|e|>", "\n\n"]))
    def check(text, cuts, fmt, sep):
        cuts = sorted({min(c, len(text)) for c in cuts})
        chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)]) if j > i]
        whole = (text if sep else text.replace("\r\n", "\n")).split(sep or ("\n" if fmt == "lines" else "\n\n"))
        assert [d for batch in split_text(iter(chunks), fmt, sep) for d in batch] == \
               [s for s in (p.strip() for p in whole) if s]

    check()


# --- concurrency: one URL, two processes -----------------------------------------------------------------------

def test_two_processes_downloading_one_url_both_get_the_right_bytes(a, tmp_path):
    body = os.urandom(2 << 20)

    def slow(h: BaseHTTPRequestHandler) -> None:  # about a second per download, so the two overlap
        if h.headers.get("If-None-Match") == '"v1"':
            send(h, b"", 304)
            return
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("ETag", '"v1"')
        h.end_headers()
        for i in range(0, len(body), 1 << 16):
            h.wfile.write(body[i:i + (1 << 16)])
            time.sleep(0.03)

    a.routes["/big.bin"] = slow
    code = ("import sys; from pathlib import Path; from lmforge.data.download import download; "
            "print(download(sys.argv[1], Path(sys.argv[2]), progress=False).read_bytes() == "
            "Path(sys.argv[3]).read_bytes())")
    (tmp_path / "expected").write_bytes(body)
    procs = [subprocess.Popen([sys.executable, "-c", code, a.url("/big.bin"), str(tmp_path / "cache"),
                               str(tmp_path / "expected")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [o[0].strip() for o in outs] == ["True", "True"], [o[1][-1000:] for o in outs]
    # one full download; the second process waited on the URL's lock, then asked whether its copy changed
    assert [h.get("If-None-Match") for _, h in a.requests] == [None, '"v1"']
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".part")]


# --- a real deployment run, executed as a process worker executes it ---------------------------------------------

@pytest.fixture(scope="module")
def deployment(prefect_server):
    """flows/prepare.py:prepare deployed to the session's Prefect server; run(...) creates a flow run of it and
    executes it the way a process worker does (`python -m prefect.engine`, PREFECT__FLOW_RUN_ID), in the
    worker's environment `env`, and returns the final state."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    from lmforge.flows.prepare import prepare

    deployment_id = prepare.to_deployment(name="policy-check").apply()
    api = PREFECT_API_URL.value()

    def run(overrides: dict, env: dict, job_variables: dict | None = None):
        flow_run = run_deployment(deployment_id, parameters={"preset": "jokes-char", "overrides": overrides},
                                  timeout=0, job_variables=job_variables)
        worker_env = {k: v for k, v in os.environ.items() if not k.startswith("LMFORGE_ALLOWED")}
        r = subprocess.run([sys.executable, "-m", "prefect.engine"], cwd=REPO, capture_output=True, text=True,
                           timeout=600, env={**worker_env, **env, "PREFECT_API_URL": api,
                                             "PREFECT__FLOW_RUN_ID": str(flow_run.id)})
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run.id).state
        return state, r.stdout + r.stderr

    return run


def test_a_deployment_run_refuses_a_local_path_and_a_host_outside_the_policy(deployment, a, tmp_path):
    (tmp_path / "c.txt").write_text("the worker's private file\n")
    state, log = deployment({"data.source": str(tmp_path / "c.txt"), "data.format": "lines"}, {})
    assert state.is_failed(), log[-3000:]
    assert "is a local path, which the default policy for a deployment run does not allow" in state.message
    corpus = "".join(f"allowed corpus line number {i}, not a secret\n" for i in range(300)).encode()
    a.routes["/ok/c.txt"] = a.routes["/other/c.txt"] = lambda h: send(h, corpus)
    worker = {"LMFORGE_ALLOWED_SOURCES": f"{a.origin}/ok/", "LMFORGE_ALLOWED_ADDRESSES": "loopback"}
    state, log = deployment({"data.source": a.url("/other/c.txt"), "data.format": "lines"}, worker)
    assert state.is_failed() and "is not allowed by the operator's policy" in state.message, log[-3000:]
    assert a.requests == []
    state, log = deployment({"data.source": a.url("/other/c.txt"), "data.format": "lines"}, worker,
                            {"env": {"LMFORGE_ALLOWED_SOURCES": "*"}})  # the triggerer's own job variables
    assert state.is_failed() and "job_variables set LMFORGE_ALLOWED_SOURCES" in state.message, log[-3000:]
    state, log = deployment({"data.source": a.url("/ok/c.txt"), "data.format": "lines"}, worker)
    assert state.is_completed(), log[-3000:]  # the allowed source, on the same path
    assert [p for p, _ in a.requests] == ["/ok/c.txt"]


def test_a_warm_start_from_a_run_directory_outside_the_policy_is_refused(deployment, tmp_path):
    """train.init_from names a run directory (its weights and tokenizer are read, then published in the new
    version) or a registered version: in a deployment run a directory is a local path like model.pretrained,
    allowed only under the operator's roots; models:/ URIs and `champion` are the registry's. Refused in the real
    deployment run before any data is read, at config load, and again where the task reads it."""
    from lmforge.core.layout import RunLayout
    from lmforge.tasks.train import resolve_start

    theirs = tmp_path / "other-team" / "runs" / "their-run"
    (theirs / "ckpt").mkdir(parents=True)
    state, log = deployment({"train.init_from": str(theirs)}, {})
    assert state.is_failed(), log[-3000:]
    assert "train.init_from" in state.message and "is a local path, which the default policy for a deployment run " \
        "does not allow" in state.message, state.message
    pol = policy_mod.load({}, deployment=True)
    for source in (str(theirs), "~/lmforge/artifacts/runs/x", "../runs/x", "/"):
        with pytest.raises(policy_mod.PolicyError, match="train.init_from .* is a local path") as info:
            load_config("jokes-char", {"train.init_from": source}, pol)
        assert "LMFORGE_ALLOWED_SOURCES=" in info.value.hint
    for source in ("models:/jokes-char@champion", "models:/jokes-char/3", "champion"):
        assert load_config("jokes-char", {"train.init_from": source}, pol).train.init_from == source
    assert load_config("jokes-char", {"train.init_from": str(theirs)}).train.init_from  # a local run: as before
    ours = tmp_path / "ours"
    (ours / "runs" / "a-run").mkdir(parents=True)
    allowed = policy_mod.load({"LMFORGE_ALLOWED_SOURCES": str(ours)}, deployment=True)
    (ours / "runs" / "link").symlink_to(theirs)  # inside the allowed root, pointing out
    with pytest.raises(policy_mod.PolicyError, match="is a local path"):
        load_config("jokes-char", {"train.init_from": str(ours / "runs" / "link")}, allowed)
    # accepted at load while the link points inside; re-pointed out before the task reads it: refused there
    (ours / "runs" / "link").unlink()
    (ours / "runs" / "link").symlink_to(ours / "runs" / "a-run")
    cfg = load_config("jokes-char", {"train.init_from": str(ours / "runs" / "link")}, allowed)
    layout = RunLayout.for_config(cfg, tmp_path / "artifacts")
    with pytest.raises(LmforgeError, match="nor a run directory with checkpoints"):  # past the policy: read
        resolve_start.fn(cfg, layout, None, allowed)
    (ours / "runs" / "link").unlink()
    (ours / "runs" / "link").symlink_to(theirs)
    with pytest.raises(policy_mod.PolicyError, match="train.init_from .* is a local path"):
        resolve_start.fn(cfg, layout, None, allowed)


# --- what a registered version may name ----------------------------------------------------------------------

@pytest.mark.parametrize("artifact_path", ["../../etc", "/etc", "artifacts/link"])
def test_an_mlmodel_naming_a_directory_outside_the_version_is_refused(tmp_path, artifact_path):
    """The MLmodel file of a downloaded version names its model directory; whoever writes the artifact store
    writes it. fetch_model_dir keeps it inside the download, judged on real paths (a symlink out too)."""
    from lmforge.registry.pyfunc import model_dir_in
    from lmforge.registry.tracking import confined_model_dir

    root = tmp_path / "version"
    (root / "artifacts").mkdir(parents=True)
    (root / "artifacts" / "link").symlink_to("/etc")
    (root / "artifacts" / "model").mkdir()
    mlmodel = "flavors:\n  python_function:\n    artifacts:\n      model_dir:\n        path: {}\n"
    (root / "MLmodel").write_text(mlmodel.format(artifact_path))
    with pytest.raises(LmforgeError, match="outside the downloaded version"):
        confined_model_dir("models:/m/1", root, model_dir_in(root))
    (root / "MLmodel").write_text(mlmodel.format("artifacts/model"))
    assert confined_model_dir("models:/m/1", root, model_dir_in(root)) == root / "artifacts" / "model"


def test_docs_list_every_ceiling_with_its_default():
    doc = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| ([\d,.]+) \|", doc, re.M))
    assert {k: float(v.replace(",", "")) for k, v in rows.items() if k in policy_mod.CEILINGS} == \
           {k: float(v) for k, (v, _) in policy_mod.CEILINGS.items()}
