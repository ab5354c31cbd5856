"""`lmforge serve-model` on 127.0.0.1, started through the real CLI, driven by the real `openai` client: every model
family and tokenizer answers the runtime's own greedy text streamed and not; max_tokens, stop strings and usage;
16 concurrent streams each get exactly their solo text; over-limit requests are 400s naming the limit; the docs'
curl and openai examples run; /health, /v1/models and /metrics; --lookahead and --batch-lookahead."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, assert_error_line
from test_deploy import free_port, stop, wait_http

openai = pytest.importorskip("openai", reason="the openai client is in the test extra")
pytest.importorskip("litserve", reason="lmforge serve-model needs the serve extra")

LMFORGE = str(Path(sys.executable).with_name("lmforge"))
TEXT = "why did the chicken cross the road? to get to the other side! the cat sat on the mat. café naïve 😀 "
PROMPTS = ["why", "the chicken cross", "t", "to get to the other s", "a cat", "café", "the road? ", "naïve 😀",
           "why did the", "side! the cat", "o", "sat on", "the mat. ", "chicken", "get to", "d"]
DOC = REPO / "docs" / "serving.md"


@pytest.fixture(scope="module")
def models(tmp_path_factory, one_torch_thread) -> dict[str, Path]:
    """One random-weight model directory per family, each with another tokenizer kind: gpt+char, gru+word,
    lstm+bpe, hf-gpt2+gpt2 (weights scaled up so greedy text varies)."""
    import torch

    from lmforge.core.config import ModelConfig
    from lmforge.data.tokenize import special_ids, train_bpe, train_char, train_word
    from lmforge.core.config import ExportConfig
    from lmforge.export.modeldir import export_model_dir
    from lmforge.models import build_model

    root = tmp_path_factory.mktemp("serve-models")
    out = {}
    for family, kind in (("gpt", "char"), ("gru", "word"), ("lstm", "bpe"), ("hf-gpt2", "gpt2")):
        d = root / family
        d.mkdir()
        if kind == "gpt2":
            transformers = pytest.importorskip("transformers", reason="hf-gpt2 needs the hf extra")
            from test_models import save_tiny_gpt2

            save_tiny_gpt2(d)
            from lmforge.data.tokenize import load_gpt2

            tok = load_gpt2(str(d))
            pretrained = str(d)
        else:
            tok = {"char": lambda: train_char([TEXT]), "word": lambda: train_word([TEXT]),
                   "bpe": lambda: train_bpe([TEXT * 4], 300)}[kind]()
            pretrained = ""
        tok.save(str(d / "tokenizer.json"))
        cfg = ModelConfig(family=family, n_layer=2, n_head=2, n_embd=32, n_hidden=32, block_size=64,
                          pretrained=pretrained)
        model = build_model(cfg, tok.get_vocab_size(), seed=0).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.4)
        ids = special_ids(tok)
        manifest = {"name": f"tiny-{family}", "tokenizer": {"kind": kind, "file": "tokenizer.json"},
                    "tokens": {**ids, "eos": None} if family == "gpt" else ids,  # gpt: no EOS, lengths exact
                    "generation": {"temperature": 0.0, "max_new_tokens": 24}}
        out[family], _ = export_model_dir(model, d / "tokenizer.json", d / "model", manifest,
                                          ExportConfig(int8=False, optimize=False))
    return out


def start(model: str, *flags: str, env: dict | None = None, cwd: Path | None = None):
    """`lmforge serve-model MODEL --port P FLAGS` in a session of its own: (process, base URL, log file)."""
    port = free_port()
    log = Path(cwd or "/tmp") / f"serve-{port}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([LMFORGE, "serve-model", model, "--port", str(port), *flags], stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd, env=env)
    return proc, f"http://127.0.0.1:{port}", log


def ready(proc, url: str, log: Path) -> str:
    try:
        wait_http(url + "/health", proc, 180)
    except (RuntimeError, TimeoutError):
        stop(proc)
        raise AssertionError(log.read_text()[-3000:]) from None
    return url


@pytest.fixture(scope="module")
def servers(models, tmp_path_factory):
    """One server per family, started together; the gpt one with low limits for the 400 tests."""
    tmp = tmp_path_factory.mktemp("serve-logs")
    low = ["--max-new-tokens", "64", "--max-prompt-bytes", "256", "--max-stop-strings", "4", "--max-stop-chars", "32"]
    started = {f: start(str(d), *(low if f == "gpt" else []), cwd=tmp) for f, d in models.items()}
    try:
        yield {f: ready(*s) for f, s in started.items()}
    finally:
        for proc, _, _ in started.values():
            stop(proc)


def client(url: str):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def solo(model_dir: Path, prompt: str, **kw) -> str:
    from lmforge.runtime import Generator

    return Generator(model_dir).generate(prompt, **kw)


def last_event(model_dir: Path, prompt: str, **kw):
    """The runtime's own last RowEvent for one request: its finish reason and token counts."""
    from lmforge.runtime import Generator, RowRequest

    return list(Generator(model_dir).stream_batch([RowRequest(prompt, **kw)]))[-1]


@pytest.mark.parametrize("family", ["gpt", "gru", "lstm", "hf-gpt2"])
def test_each_family_answers_the_runtimes_greedy_text_streamed_and_not(models, servers, family):
    from lmforge.runtime import Generator

    gen = Generator(models[family])
    c = client(servers[family])
    name = c.models.list().data[0].id
    assert name == f"tiny-{family}"
    for prompt in ("why did the", "the cat"):
        expected = gen.generate(prompt, max_new_tokens=20, temperature=0)
        got = c.completions.create(model=name, prompt=prompt, max_tokens=20, temperature=0)
        assert got.object == "text_completion" and got.model == name
        assert got.choices[0].text == expected
        assert got.usage.prompt_tokens == len(gen.encode(prompt))
        pieces = [ch.choices[0].text for ch in c.completions.create(model=name, prompt=prompt, max_tokens=20,
                                                                   temperature=0, stream=True) if ch.choices]
        assert "".join(pieces) == expected
        assert len([p for p in pieces if p]) > 1  # streamed piece by piece, not one chunk at the end


def test_max_tokens_stop_strings_usage_and_defaults(models, servers):
    c, gen_dir = client(servers["gpt"]), models["gpt"]
    full = solo(gen_dir, "why", max_new_tokens=30, temperature=0)
    prompt_tokens = last_event(gen_dir, "why", max_new_tokens=1).prompt_tokens
    got = c.completions.create(model="tiny-gpt", prompt="why", max_tokens=30, temperature=0)
    assert got.choices[0].text == full and got.choices[0].finish_reason == "length"
    assert (got.usage.prompt_tokens, got.usage.completion_tokens, got.usage.total_tokens) == \
        (prompt_tokens, 30, prompt_tokens + 30)  # the model has no EOS: always max_tokens
    stop = full[10:12]
    cut = full[:full.find(stop)]
    ref = last_event(gen_dir, "why", max_new_tokens=30, temperature=0, stop=[stop])
    assert ref.finish_reason == "stop" and ref.completion_tokens < 30
    got = c.completions.create(model="tiny-gpt", prompt="why", max_tokens=30, temperature=0, stop=[stop, "@@"])
    assert got.choices[0].text == cut and got.choices[0].finish_reason == "stop"
    assert got.usage.completion_tokens == ref.completion_tokens
    chunks = list(c.completions.create(model="tiny-gpt", prompt="why", max_tokens=30, temperature=0, stop=stop,
                                       stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == cut
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == ref.completion_tokens
    # no max_tokens, no temperature: lmforge.json's generation defaults (24 tokens, greedy)
    got = c.completions.create(model="tiny-gpt", prompt="why")
    assert got.choices[0].text == solo(gen_dir, "why") and got.usage.completion_tokens == 24
    # a seed gives the same sampled text as the runtime with that seed
    got = c.completions.create(model="tiny-gpt", prompt="why", max_tokens=25, temperature=1.0, top_p=0.9, seed=7)
    assert got.choices[0].text == solo(gen_dir, "why", max_new_tokens=25, temperature=1.0, top_p=0.9, seed=7)


def test_sixteen_concurrent_streams_each_get_their_solo_text(models, servers):
    """Different prompts, lengths and sampling, all in flight at once: batching changes no answer."""
    c = client(servers["gpt"])
    asks = [dict(prompt=p, max_tokens=8 + 3 * i, temperature=0 if i % 2 else 0.8, seed=i)
            for i, p in enumerate(PROMPTS)]
    got: dict[int, str] = {}
    barrier = threading.Barrier(len(asks))

    def one(i: int) -> None:
        barrier.wait()
        stream = c.completions.create(model="tiny-gpt", stream=True, **asks[i])
        got[i] = "".join(ch.choices[0].text for ch in stream if ch.choices)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    expected = {i: solo(models["gpt"], a["prompt"], max_new_tokens=a["max_tokens"], temperature=a["temperature"],
                        seed=a["seed"]) for i, a in enumerate(asks)}
    assert got == expected


@pytest.mark.parametrize("ask, named, param", [
    ({"max_tokens": 65}, "limits.max_new_tokens", "max_tokens"),
    ({"prompt": "x" * 257}, "limits.max_prompt_bytes", "prompt"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "limits.max_stop_strings", "stop"),
    ({"stop": "s" * 33}, "limits.max_stop_chars", "stop"),
    ({"temperature": -1}, "temperature", "temperature"),
    ({"top_p": 0}, "top_p", "top_p"),
    ({"n": 2}, "n=2", "n"),
    ({"extra_body": {"top_k": -3}}, "top_k", "top_k"),
])
def test_over_limit_and_invalid_requests_are_400s_naming_the_limit(servers, ask, named, param):
    """The serve-model flags lowered the runtime's limits; the runtime's RequestError is the 400's message."""
    c = client(servers["gpt"])
    body = {"model": "tiny-gpt", "prompt": "why", **ask}
    with pytest.raises(openai.BadRequestError) as err:
        c.completions.create(**body)
    assert err.value.status_code == 400 and named in err.value.message
    assert err.value.body["param"] == param
    if param != "n":  # the runtime's RequestError: its problem and its fix, once; `code` read from the problem
        assert re.fullmatch(r".+ \(hint: .+\)", err.value.body["message"]), err.value.body
        assert err.value.body["message"].count("(hint: ") == 1
        assert (err.value.body["code"] == "limit") == named.startswith("limits.")
    with pytest.raises(openai.BadRequestError):  # streamed: refused before any event, with the same status
        c.completions.create(stream=True, **body)


def test_unknown_model_is_404_and_bad_json_is_400(servers):
    with pytest.raises(openai.NotFoundError, match="tiny-gpt"):
        client(servers["gpt"]).completions.create(model="gpt-4", prompt="why")
    req = urllib.request.Request(servers["gpt"] + "/v1/completions", data=b"{not json",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400 and "not valid JSON" in json.loads(err.value.read())["error"]["message"]


def doc_block(heading: str, lang: str) -> str:
    section = DOC.read_text(encoding="utf-8").split(heading, 1)[1]
    return re.search(rf"```{lang}\n(.*?)```", section, re.DOTALL).group(1)


def test_the_docs_curl_sse_and_openai_examples_run(models, servers, tmp_path):
    url = servers["gpt"]
    port = url.rsplit(":", 1)[1]
    expected = solo(models["gpt"], "Why", max_new_tokens=16, temperature=0)
    curl = [line for line in doc_block("### Streaming with curl", "bash").splitlines() if line.strip()]
    words = shlex.split(" ".join(line.rstrip("\\") for line in curl).replace(":8000", f":{port}"))
    assert words[0] == "curl" and "-N" in words
    body = json.loads(words[words.index("-d") + 1])
    body["model"] = "tiny-gpt"
    words[words.index("-d") + 1] = json.dumps(body)
    out = subprocess.run(words, capture_output=True, text=True, timeout=120, check=True).stdout
    events = [line[len("data: "):] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 3  # the first text at once, the rest after it
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]
                   if json.loads(e)["choices"]) == expected
    script = tmp_path / "example.py"
    script.write_text(doc_block("### The openai client", "python").replace(":8000", f":{port}")
                      .replace('"jokes-char"', '"tiny-gpt"'))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.startswith(expected) and out.stdout.count(expected) == 2  # streamed, then whole


def test_health_models_and_prometheus_metrics(servers):
    from prometheus_client.parser import text_string_to_metric_families

    url = servers["gpt"]
    with urllib.request.urlopen(url + "/health", timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b"ok"
    c = client(url)
    for _ in range(2):
        c.completions.create(model="tiny-gpt", prompt="why", max_tokens=5, temperature=0)
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    value = lambda fam, sample, **labels: next(s.value for s in families[fam].samples
                                               if s.name == sample and s.labels == labels)
    assert value("lmforge_requests", "lmforge_requests_total", code="200") >= 2
    assert value("lmforge_completion_tokens", "lmforge_completion_tokens_total") >= 10
    assert value("lmforge_time_to_first_token_seconds", "lmforge_time_to_first_token_seconds_count") >= 2
    assert value("lmforge_queue_length", "lmforge_queue_length") == 0
    assert value("lmforge_requests_in_flight", "lmforge_requests_in_flight") == 0
    assert value("lmforge_tokens_per_second", "lmforge_tokens_per_second") > 0


def test_lookahead_flag_sets_the_servers_speculation_and_keeps_its_text(models, servers, tmp_path):
    """--lookahead K: the Generator's draft length in the worker, shown in GET /v1/models; on fp32 speculation gives
    the same greedy text, so a server with it off answers exactly what the default one (the model's lookahead) does."""
    from lmforge.runtime import Generator

    default = Generator(models["gpt"]).lookahead
    assert default > 0  # the gpt fast graph speculates by default (fp32): the two servers differ

    def about(url: str) -> dict:
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as resp:
            return json.loads(resp.read())["data"][0]["lmforge"]

    proc, url, log = start(str(models["gpt"]), "--lookahead", "0", cwd=tmp_path)
    try:
        ready(proc, url, log)
        assert about(url)["lookahead"] == 0 and about(servers["gpt"])["lookahead"] == default
        for prompt in ("why did the", "the cat"):
            texts = [client(u).completions.create(model="tiny-gpt", prompt=prompt, max_tokens=20, temperature=0)
                     .choices[0].text for u in (url, servers["gpt"])]
            assert texts[0] == texts[1] == Generator(models["gpt"], lookahead=0).generate(
                prompt, max_new_tokens=20, temperature=0)
    finally:
        stop(proc)


def test_batch_lookahead_flag_speculates_a_batch_of_8_and_keeps_every_text(tmp_path):
    """--batch-lookahead on a model exported with its rows graph: GET /v1/models shows the batch of 8 that checks its
    drafts together, the worker's Generator runs it (its log line), and 8 concurrent greedy requests each get the
    text lookahead 0 gives alone (fp32). Without a rows graph, with lookahead 0, the int8 variant (exported, but with
    no rows graph of its own) or another --max-batch: one error line."""
    import torch

    from lmforge.core.config import ExportConfig, ModelConfig
    from lmforge.data.tokenize import special_ids, train_char
    from lmforge.export.modeldir import export_model_dir
    from lmforge.models import build_model
    from lmforge.runtime import Generator

    tok = train_char([TEXT])
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gpt", n_layer=2, n_head=2, n_embd=32, block_size=64),
                        tok.get_vocab_size(), seed=0).eval()
    manifest = {"name": "tiny-rows", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
                "tokens": {**special_ids(tok), "eos": None}, "generation": {"temperature": 0.0}}
    rows_dir, _ = export_model_dir(model, tmp_path / "tokenizer.json", tmp_path / "rows-model", manifest,
                                   ExportConfig(int8=True, optimize=False, rows_graph=True))
    for flags in (["--max-batch", "16"], ["--lookahead", "0"], ["--variant", "int8"]):
        got = subprocess.run([LMFORGE, "serve-model", str(rows_dir), "--batch-lookahead", *flags],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert got.returncode == 2 and got.stdout == "", got.stderr
        assert_error_line(got.stderr.strip())
    proc, url, log = start(str(rows_dir), "--batch-lookahead", "--log-level", "info", cwd=tmp_path)
    try:
        ready(proc, url, log)
        with urllib.request.urlopen(url + "/v1/models", timeout=10) as resp:
            about = json.loads(resp.read())["data"][0]["lmforge"]
        assert about["batch_lookahead"] == 8 and about["max_batch"] == 8 and about["lookahead"] > 0
        c, got, barrier = client(url), {}, threading.Barrier(8)

        def one(prompt: str) -> None:
            barrier.wait()
            got[prompt] = c.completions.create(model="tiny-rows", prompt=prompt, max_tokens=40,
                                               temperature=0).choices[0].text

        threads = [threading.Thread(target=one, args=(p,)) for p in PROMPTS[:8]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        plain = Generator(rows_dir, lookahead=0)
        assert got == {p: plain.generate(p, max_new_tokens=40, temperature=0) for p in PROMPTS[:8]}
        assert "batch of 8, speculating together: yes" in log.read_text()
    finally:
        stop(proc)


def test_a_bad_model_host_or_limit_is_one_error_line(models, tmp_path):
    for argv in (["serve-model", str(tmp_path / "nowhere")], ["serve-model", str(tmp_path), "--host", "10.1.2.3"],
                 ["serve-model", str(models["gpt"]), "--max-new-tokens", str(10**9)],
                 ["serve-model", str(models["gpt"]), "--lookahead", "99"],
                 ["serve-model", str(models["gpt"]), "--batch-lookahead"]):
        got = subprocess.run([LMFORGE, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert got.returncode == 2 and got.stdout == ""
        assert_error_line(got.stderr.strip())  # the runtime's hint, or serve-model's own for a flag: not both
