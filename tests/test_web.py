"""`lmforge web DIR` in a real headless Chromium with onnxruntime-web from npm: tiny trained GPT (char), GRU
(byte-level BPE) and LSTM (word) models decode in the page, and the page's greedy tokens equal
lmforge.runtime.Generator's, token for token (the GPT past its context too); the page's tokenizer equals
`tokenizers` on every kind lmforge exports; the server serves only what the page needs, on 127.0.0.1."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lmforge.runtime import read_model_dir
from lmforge.web.browser import Chromium, find_chromium
from lmforge.web.server import ORT_DIST, ORT_FILES, WEB

TEXT = ("why did the chicken cross the road? to get to the other side! the other side of the road was green, "
        "and the chicken liked green grass. it's 12 o'clock, said the farmer; the chicken did not care. "
        "café, naïve, 😀 and the road again: why did the farmer cross the road? to find the chicken. ") * 4
SPECIALS = {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
# strings the page's tokenizer must encode exactly as `tokenizers` does: unseen characters, literal special
# tokens, whitespace runs, digits, underscores, contractions, combining marks, other scripts, emoji
STRINGS = ["why did the chicken", " the road?", "", "Zebra ✓ crossing", "<eos>the<bos> road<unk>", "a  \n\t b  ",
           "12345 67", "foo_bar __x", "it's don't we'll", "   leading", "trailing   ", "e\u0301 café", "日本語のテキスト",
           "مرحبا بالعالم", "😀😀 👩‍👩‍👧", "tab\there\r\nnew", "ÆØÅ æøå ß", "x" * 300]


def _ort_web() -> None:
    missing = [f for f in ORT_FILES if not (ORT_DIST / f).is_file()]
    if missing:
        pytest.skip(f"onnxruntime-web is not installed ({ORT_DIST / missing[0]} missing): npm ci --prefix {WEB} "
                    "(make test does it)")


@pytest.fixture(scope="module")
def browser():
    _ort_web()
    if find_chromium() is None:
        pytest.skip("no chromium on PATH: apt-get install chromium (.ci/run does it when root with apt-get)")
    with Chromium() as b:
        yield b


def train(model, ids, steps: int = 200, block: int = 24, seed: int = 0):
    """Adam steps on random windows of `ids`: a trained model, not random weights."""
    import torch

    torch.manual_seed(seed)
    data = torch.tensor(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - block - 1, (8,))
        x = torch.stack([data[s:s + block] for s in starts])
        y = torch.stack([data[s + 1:s + block + 1] for s in starts])
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def export(model, tok, root: Path, name: str, kind: str) -> Path:
    from lmforge.core.config import ExportConfig
    from lmforge.export.modeldir import export_model_dir

    tok.save(str(root / f"{name}.tokenizer.json"))
    manifest = {"name": name, "tokenizer": {"kind": kind, "file": "tokenizer.json"}, "tokens": SPECIALS,
                "generation": {"temperature": 0.0, "max_new_tokens": 40}}
    out, _ = export_model_dir(model, root / f"{name}.tokenizer.json", root / name, manifest,
                              ExportConfig(int8=True, optimize=False))
    return out


@pytest.fixture(scope="module")
def tokenizers_by_kind():
    from lmforge.data.tokenize import train_bpe, train_char, train_word

    docs = [TEXT]
    return {"char": train_char(docs), "word": train_word(docs), "bpe": train_bpe(docs, 300)}


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizers_by_kind, one_torch_thread):
    """{name: model dir}: gpt (char, 32-token context), gru (bpe), lstm (word), each trained for 200 steps."""
    import torch

    from lmforge.models.gpt import GPT, GPTConfig
    from lmforge.models.gru import GRU
    from lmforge.models.lstm import LSTM, RNNConfig

    root = tmp_path_factory.mktemp("web")
    out = {}
    for name, kind, make in (
            ("gpt", "char", lambda v: GPT(GPTConfig(vocab_size=v, block_size=32, n_layer=2, n_head=2, n_embd=32))),
            ("gru", "bpe", lambda v: GRU(RNNConfig(vocab_size=v, n_layer=2, n_embd=32, n_hidden=48))),
            ("lstm", "word", lambda v: LSTM(RNNConfig(vocab_size=v, n_layer=2, n_embd=32, n_hidden=48)))):
        tok = tokenizers_by_kind[kind]
        torch.manual_seed(0)
        model = train(make(tok.get_vocab_size()), tok.encode(TEXT, add_special_tokens=False).ids)
        out[name] = export(model, tok, root, name, kind)
    return out


class Server:
    """`lmforge web DIR --port 0` as a user runs it, in a subprocess; .url is the address it prints."""

    def __init__(self, model_dir: Path, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "web", str(model_dir), "--port", "0",
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            self.proc.kill()
            raise AssertionError(f"lmforge web did not start: {line}{self.proc.stderr.read()}")
        self.url = line.split(" at ", 1)[1].split()[0]

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def python_greedy(model_dir: Path, prompt: str, n: int, fast: bool | None, variant: str = "fp32"):
    """(prompt ids, the ids lmforge.runtime.Generator picks, its text), greedy, on `variant`: the ids are the ones
    its batch API reports with each piece of text (RowEvent.token_ids)."""
    from lmforge.runtime import Generator, RowRequest

    gen = Generator(model_dir, variant=variant, fast=fast)
    events = list(gen.stream_batch([RowRequest(prompt, max_new_tokens=n, temperature=0)]))
    ids = [i for ev in events for i in ev.token_ids]
    text = "".join(ev.text for ev in events)
    assert text == gen.generate(prompt, max_new_tokens=n, temperature=0)
    return gen.prompt_ids(prompt), ids, text


DONE = "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"


def run_page(browser, url: str, **query) -> dict:
    page = browser.open(url + "?" + urllib.parse.urlencode({**query, "auto": 1}))
    state = page.wait_for(DONE, timeout=180)
    result = page.evaluate("window.lmforgeResult")
    assert state == "done", (result, page.log())
    result["shown"] = page.evaluate("document.getElementById('generated').textContent")
    return result


# gpt: a 9-character prompt + 80 tokens passes the 32-token context twice: the page re-prefills as the runtime does;
# an empty prompt is <bos> alone; a prompt longer than the context keeps its last 31 tokens
@pytest.mark.parametrize("name,graph,variant,prompt", [
    ("gpt", "fast", "fp32", "why did t"), ("gpt", "portable", "fp32", "why did t"), ("gpt", "fast", "int8", "café"),
    ("gpt", "fast", "fp32", ""), ("gpt", "fast", "fp32", "the chicken liked green grass and the road again"),
    ("gru", "rnn", "fp32", "why did the"), ("gru", "rnn", "int8", "the road"), ("lstm", "rnn", "fp32", " the chicken"),
    ("lstm", "rnn", "int8", "why")])
def test_page_greedy_tokens_equal_python_runtime(browser, models, name, graph, variant, prompt):
    n = 80
    query = {"prompt": prompt, "n": n, "temperature": 0, "variant": variant}
    if graph == "portable":  # and on two wasm threads (the page is cross-origin isolated)
        query.update(graph="portable", threads=2)
    with Server(models[name]) as srv:
        got = run_page(browser, srv.url, **query)
    prompt_ids, ids, text = python_greedy(models[name], prompt, n, graph == "fast" if name == "gpt" else None,
                                          variant)
    assert got["graph"] == graph and got["file"] == read_model_dir(models[name]).manifest["files"][
        {("fast", "fp32"): "fast", ("fast", "int8"): "fast-int8"}.get((graph, variant), variant)]
    assert got["promptIds"] == prompt_ids
    assert got["ids"] == ids and len(ids) > 1
    assert got["text"] == text and got["shown"] == text  # the streamed pieces add up to the whole text
    assert got["tokensPerSecond"] > 0
    if graph == "fast":  # the cache kept its capacity, min(context, prompt + new tokens), to the last step
        assert got["cacheDims"] == [1, 2, 32, 16]
    if graph == "portable":
        assert got["threads"] == 2 and got["crossOriginIsolated"]


def test_eos_ends_generation_in_the_page_as_in_python(browser, models, tmp_path):
    _, ids, _ = python_greedy(models["gpt"], "why did t", 40, None)
    k = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])  # a token first picked at step k >= 3
    d = tmp_path / "m"
    shutil.copytree(models["gpt"], d)
    manifest = json.loads((d / "lmforge.json").read_text())
    manifest["tokens"]["eos"] = ids[k]
    (d / "lmforge.json").write_text(json.dumps(manifest))
    with Server(d) as srv:
        got = run_page(browser, srv.url, prompt="why did t", n=40, temperature=0)
    _, ids_eos, text = python_greedy(d, "why did t", 40, None)
    assert got["ids"] == ids_eos == ids[:k] and got["text"] == text


def test_person_types_a_prompt_and_tokens_stream(browser, models):
    """The form, as a person uses it: type, press Generate, read the text the page wrote."""
    with Server(models["gpt"]) as srv:
        page = browser.open(srv.url)
        assert page.wait_for("document.body.dataset.state === 'ready'", timeout=120)
        # the form starts from the directory's generation defaults
        assert page.evaluate("[document.getElementById('n').value, document.getElementById('temperature').value]") \
            == ["40", "0"]
        page.evaluate("document.getElementById('prompt').value = 'the road'; "
                      "document.getElementById('n').value = '25'; document.getElementById('go').click()")
        assert page.wait_for(DONE, timeout=120) == "done"
        shown = page.evaluate("document.getElementById('generated').textContent")
        stats = page.evaluate("document.getElementById('stats').textContent")
    _, _, text = python_greedy(models["gpt"], "the road", 25, None)
    assert shown == text and "tokens/s" in stats


def test_page_samples_with_temperature_and_top_k(browser, models):
    with Server(models["gru"]) as srv:
        got = run_page(browser, srv.url, prompt="the", n=30, temperature=1.0, top_k=5)
    assert 0 < len(got["ids"]) <= 30 and all(0 <= i < 300 and i != SPECIALS["eos"] for i in got["ids"])


def gpt2_tokenizer(bpe, tmp_path: Path):
    """lmforge's gpt2 kind, read from vocab.json + merges.txt (as a downloaded GPT-2 tokenizer is)."""
    from conftest import gpt2_tokenizer_files

    from lmforge.data.tokenize import load_gpt2

    gpt2_tokenizer_files(bpe, tmp_path)
    return load_gpt2(str(tmp_path))


@pytest.mark.parametrize("form", ["trained", "exported"])
@pytest.mark.parametrize("kind", ["char", "word", "bpe", "gpt2"])
def test_page_tokenizer_equals_tokenizers(browser, models, tokenizers_by_kind, kind, form, tmp_path):
    """As trained (an export from before the post-processor) and as exported (lmforge.export.tokenizer: <bos> in
    the post-processor, a char vocabulary as a BPE): encode(s) with and without special tokens, and decode."""
    from lmforge.export.tokenizer import export_tokenizer

    tok = gpt2_tokenizer(tokenizers_by_kind["bpe"], tmp_path) if kind == "gpt2" else tokenizers_by_kind[kind]
    if form == "exported":
        tok.save(str(tmp_path / "trained.json"))
        tok = export_tokenizer(tmp_path / "trained.json", 64).tokenizer
        assert tok.encode("why").ids[0] == (tok.token_to_id("<bos>") if kind != "gpt2" else tok.token_to_id("<|endoftext|>"))
    strings = STRINGS + [TEXT, "a\u2581b \u2581"]
    with Server(models["gpt"]) as srv:
        page = browser.open(srv.url)
        page.wait_for("document.body.dataset.state === 'ready'", timeout=120)
        expected_ids = [tok.encode(s).ids for s in strings]
        plain_ids = [tok.encode(s, add_special_tokens=False).ids for s in strings]
        # every prefix of a byte-level encoding decodes as `tokenizers` does, split characters included
        prefixes = [ids[:k] for ids in expected_ids for k in range(len(ids) + 1)][:3000]
        got = page.evaluate(
            "(async () => { const { Tokenizer } = await import('/tokenizer.js');"
            f" const t = new Tokenizer({tok.to_str()}); const strings = {json.dumps(strings)};"
            f" const prefixes = {json.dumps(prefixes)};"
            " return { ids: strings.map((s) => t.encode(s)), plain: strings.map((s) => t.encode(s, false)),"
            " text: prefixes.map((p) => t.decode(p)) }; })()")
    for s, want, have in zip(strings, expected_ids, got["ids"]):
        assert have == want, s
    assert got["plain"] == plain_ids
    assert got["text"] == [tok.decode(p) for p in prefixes]


def test_unsupported_tokenizer_is_one_error_in_the_page(browser, models, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(models["gpt"], d)
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Lowercase"}
    (d / "tokenizer.json").write_text(json.dumps(tok))
    with Server(d) as srv:
        page = browser.open(srv.url + "?prompt=why&auto=1")
        assert page.wait_for(DONE, timeout=120) == "error"
        error = page.evaluate("document.getElementById('error').textContent")
    assert error.startswith("error: tokenizer.json: normalizer Lowercase is not supported in the page")
    assert "\n" not in error


def get(url: str, host: str | None = None):
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), b""


def test_server_serves_only_the_page_ort_and_the_model_files(models, tmp_path):
    _ort_web()
    d = tmp_path / "m"
    shutil.copytree(models["gpt"], d)
    (d / "secret.txt").write_text("not for the page")
    with Server(d) as srv:
        base = srv.url.rstrip("/")
        assert srv.url.startswith("http://127.0.0.1:")
        status, headers, body = get(base + "/")
        assert status == 200 and b"/app.js" in body and headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        status, headers, body = get(base + "/ort/ort-wasm-simd-threaded.wasm")
        assert status == 200 and headers["Content-Type"] == "application/wasm" and body[:4] == b"\0asm"
        assert get(base + "/model/model.fast.onnx")[0] == 200
        head = urllib.request.urlopen(urllib.request.Request(base + "/app.js", method="HEAD"), timeout=30)
        assert head.status == 200 and head.read() == b"" and int(head.headers["Content-Length"]) > 0
        for path in ("/model/secret.txt", "/model/../lmforge.json", "/model/%2e%2e/lmforge.json", "/etc/passwd",
                     "/ort/ort.all.mjs", "/serve.py", "/package.json"):
            assert get(base + path)[0] == 404, path
        port = base.rsplit(":", 1)[1]
        assert get(base + "/", host=f"evil.example:{port}")[0] == 421  # DNS rebinding
        with socket.create_connection(("127.0.0.1", int(port))) as s:  # POST is not served
            s.sendall(f"POST / HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n".encode())
            assert b" 501 " in s.recv(200).split(b"\r\n")[0]


def test_server_serves_the_files_it_opened_at_start_even_once_one_becomes_a_symlink(models, tmp_path):
    """Each file is opened when the server starts: a manifest replaced by a symlink to a worker's file afterwards
    serves the manifest that was checked, never the file the link points at."""
    _ort_web()
    d = tmp_path / "m"
    shutil.copytree(models["gpt"], d)
    secret = tmp_path / "secret.txt"
    secret.write_text("the worker's private file")
    with Server(d) as srv:
        base = srv.url.rstrip("/")
        status, _, before = get(base + "/model/lmforge.json")
        (d / "lmforge.json").unlink()
        (d / "lmforge.json").symlink_to(secret)
        status, headers, after = get(base + "/model/lmforge.json")
        assert status == 200 and after == before and b"private" not in after
        assert int(headers["Content-Length"]) == len(before)


def test_idle_and_trickling_connections_are_closed_and_capped(models, monkeypatch):
    """At most MAX_CONNECTIONS at once (one more: 503, closed at once); a silent connection is closed after the
    read timeout; one that sends a byte just inside it every time is closed at the connection's deadline."""
    import threading
    import time

    from lmforge.web import server as web

    _ort_web()
    monkeypatch.setattr(web, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(web.Handler, "timeout", 3.0)
    monkeypatch.setattr(web, "CONNECTION_SECONDS", 6.0)
    srv = web.make_server(models["gpt"], 0)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
        for s in held:
            s.sendall(b"GET / HTTP/1.0\r\n")  # half a request
        closed = threading.Event()

        def trickle(sock: socket.socket) -> None:  # a header byte every second: each read inside the timeout
            for _ in range(30):
                try:
                    sock.sendall(b"X")
                except OSError:
                    closed.set()
                    return
                time.sleep(1.0)

        trickler = threading.Thread(target=trickle, args=(held[3],))
        trickler.start()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as extra:
            assert extra.recv(100).startswith(b"HTTP/1.0 503")
        assert [s.recv(100) for s in held[:3]] == [b"", b"", b""]  # silent ones: closed by the server
        trickler.join()
        assert closed.is_set()  # the trickling one: closed at the connection's deadline
        status, _, body = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"/app.js" in body  # the slots came back
    finally:
        srv.shutdown()
        srv.server_close()


def lmforge_web(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmforge.cli", "web", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_bad_dir_and_busy_port_are_one_line_errors(models, tmp_path):
    _ort_web()
    for args in ([str(tmp_path / "missing")], [str(tmp_path)]):
        r = lmforge_web(*args)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "(hint: " in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = lmforge_web(str(models["gpt"]), "--port", str(busy.getsockname()[1]))
    assert r.returncode == 2 and "is in use" in r.stderr and r.stderr.count("\n") == 1
    r = lmforge_web(str(models["gpt"]), "--port", "70000")
    assert r.returncode == 2 and "not a TCP port" in r.stderr and r.stderr.count("\n") == 1
