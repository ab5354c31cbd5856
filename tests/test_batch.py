"""The runtime's batch API (lmforge.runtime.batch): rows that are separate requests -- different prompt lengths,
max_new_tokens, sampling parameters, repetition penalties, stop strings and seeds -- decoded in one batch give
exactly the text each gets alone, on the fast graph, the portable graph and a recurrent graph; rows that join a
running batch between steps (continuous batching) too; every row ends with one event naming why."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import tiny_random_gpt

from lmforge.data.tokenize import train_char
from lmforge.core.config import ExportConfig
from lmforge.export.modeldir import export_model_dir
from lmforge.runtime import BatchSession, Generator, RequestError, RowRequest

TEXT = "why did the chicken cross the road? to get to the other side! café naïve"
LONG = "the chicken crossed the road and the other side was green " * 3  # longer than the 32-token context

REQUESTS = [
    RowRequest("why", max_new_tokens=12, temperature=0),
    RowRequest(LONG, max_new_tokens=45, temperature=0),  # a full context at once, then slides
    RowRequest("t", max_new_tokens=70, temperature=0.9, top_k=8, seed=3),  # slides past the context, sampled
    RowRequest("to get to the other s", max_new_tokens=20, temperature=1.2, top_p=0.8, seed=11),
    RowRequest("café", max_new_tokens=30, temperature=0, repetition_penalty=1.5),
    RowRequest("the road", max_new_tokens=25, temperature=1.0, seed=3, repetition_penalty=1.3, top_k=5),
    RowRequest("", max_new_tokens=15, temperature=0.7, seed=0),
    RowRequest("t", max_new_tokens=70, temperature=0.9, top_k=8, seed=3),  # the same request twice: the same text
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, one_torch_thread):
    """{"gpt": dir, "gru": dir}: a random GPT (32-token context, fast + portable graphs) and a random GRU."""
    from lmforge.models.gru import GRU
    from lmforge.models.lstm import RNNConfig

    import torch

    root = tmp_path_factory.mktemp("batch")
    tok = train_char([TEXT])
    tok.save(str(root / "tokenizer.json"))
    manifest = {"name": "tiny", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
                "tokens": {"pad": 0, "unk": 1, "bos": None, "eos": None}, "generation": {"temperature": 0.0}}
    model = tiny_random_gpt(tok.get_vocab_size())
    gpt, _ = export_model_dir(model, root / "tokenizer.json", root / "gpt", manifest,
                              ExportConfig(int8=False, optimize=False))
    torch.manual_seed(0)
    gru = GRU(RNNConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=16, n_hidden=32)).eval()
    with torch.no_grad():
        for p in gru.parameters():
            p.normal_(0, 0.5)
    rnn, _ = export_model_dir(gru, root / "tokenizer.json", root / "gru", manifest,
                              ExportConfig(int8=False, optimize=False))
    return {"gpt": gpt, "gru": rnn}


def with_eos(src, dst, gen: Generator):
    """A copy of `src` whose EOS is a token greedy decoding of "why" picks at its 6th step: rows end early."""
    ids = gen.encode("why" + gen.generate("why", max_new_tokens=6, temperature=0))
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "lmforge.json").read_text())
    manifest["tokens"]["eos"] = ids[-1]
    (dst / "lmforge.json").write_text(json.dumps(manifest))
    return dst


def alone(gen: Generator, req: RowRequest) -> str:
    return "".join(ev.text for ev in gen.stream_batch([req]))


def batch_texts(events, n: int) -> tuple[list[str], list]:
    texts, last = [""] * n, [None] * n
    for ev in events:
        assert last[ev.row] is None, "no event after a row's final one"
        texts[ev.row] += ev.text
        if ev.finish_reason:
            last[ev.row] = ev
    assert all(last), "every row ends with one event that names why"
    return texts, last


@pytest.mark.parametrize("graph", ["fast", "portable", "gru"])
def test_rows_with_their_own_requests_equal_each_alone(dirs, graph, tmp_path):
    base = Generator(dirs["gru" if graph == "gru" else "gpt"])
    d = with_eos(dirs["gru" if graph == "gru" else "gpt"], tmp_path / "m", base)
    gen = Generator(d, fast={"fast": True, "portable": False}.get(graph))
    solo = [alone(gen, r) for r in REQUESTS]
    assert len(set(solo)) >= 5 and solo[2] == solo[7]  # varied; the same seed gives the same text
    texts, last = batch_texts(gen.stream_batch(REQUESTS), len(REQUESTS))
    assert texts == solo
    assert {e.finish_reason for e in last} == {"stop", "length"}  # EOS ended some rows, max_new_tokens others
    for req, ev, text in zip(REQUESTS, last, texts):
        assert ev.completion_tokens <= req.max_new_tokens
        assert ev.finish_reason == "stop" or ev.completion_tokens == req.max_new_tokens
        assert ev.prompt_tokens == len(gen.prompt_ids(req.prompt))
    assert gen.generate([r.prompt for r in REQUESTS[:3]], max_new_tokens=10, temperature=0) == \
        [gen.generate(r.prompt, max_new_tokens=10, temperature=0) for r in REQUESTS[:3]]


@pytest.mark.parametrize("graph", ["fast", "portable", "gru"])
def test_rows_joining_a_running_batch_equal_each_alone(dirs, graph):
    """Two slots, rows added between steps and queued while both are busy: each row's text is its solo text."""
    gen = Generator(dirs["gru" if graph == "gru" else "gpt"], fast={"fast": True, "portable": False}.get(graph))
    full = gen.generate("why", max_new_tokens=30, temperature=0)
    cut = full[6:8]
    stops = [RowRequest("why", max_new_tokens=30, temperature=0, stop=["zq", cut]),
             RowRequest("the", max_new_tokens=40, temperature=1.0, seed=5, stop=["o t", "zz"])]
    reqs = REQUESTS[:6] + stops
    solo = [alone(gen, r) for r in reqs]
    session = BatchSession(gen, slots=2)
    texts, ids, running = {}, {}, []
    ids[session.add(reqs[0])] = 0
    pending = list(enumerate(reqs))[1:]
    finished = {}
    step = 0
    while session.busy or pending:
        if pending and step % 3 == 1:  # a row arrives every third step
            i, r = pending.pop(0)
            ids[session.add(r)] = i
        for ev in session.step():
            texts[ids[ev.row]] = texts.get(ids[ev.row], "") + ev.text
            if ev.finish_reason:
                finished[ids[ev.row]] = ev.finish_reason
        running.append(int(session.dec.live.sum()))
        step += 1
    assert [texts.get(i, "") for i in range(len(reqs))] == solo
    assert max(running) == 2 and len(finished) == len(reqs)
    assert finished[6] == "stop" and texts[6] == full[:full.index(cut)]  # cut before the stop string


def test_cancel_and_deadline_end_rows_with_their_reason(dirs):
    gen = Generator(dirs["gpt"])
    session = BatchSession(gen, slots=1)
    a = session.add(RowRequest("why", max_new_tokens=5, temperature=0))
    b = session.add(RowRequest("the", max_new_tokens=5, temperature=0))  # queued behind a
    session.cancel(b)
    reasons = {}
    while session.busy:
        reasons.update({ev.row: ev.finish_reason for ev in session.step() if ev.finish_reason})
    assert reasons == {a: "length", b: "cancelled"}
    gen = Generator(dirs["gpt"], limits={"deadline_s": 0.001})  # 2000 tokens never fit in a millisecond
    session = BatchSession(gen, slots=1)
    session.add(RowRequest("why", max_new_tokens=2000, temperature=0))
    events = []
    while session.busy:
        events += session.step()
    assert events[-1].finish_reason == "deadline" and events[-1].completion_tokens < 2000
    with pytest.raises(RequestError, match="deadline"):
        gen.generate("why", max_new_tokens=2000)


def test_a_bad_request_in_a_batch_is_refused_before_any_work(dirs):
    gen = Generator(dirs["gpt"])
    with pytest.raises(RequestError, match="top_p"):
        gen.stream_batch([RowRequest("why"), RowRequest("the", top_p=3.0)])
    with pytest.raises(RequestError, match="RowRequest"):
        gen.stream_batch(["why"])


def test_readme_runtime_example_runs(dirs, capsys):
    """README's "Using the runtime from Python" block as written, on a model directory of the test's."""
    import re

    from conftest import REPO

    text = (REPO / "README.md").read_text(encoding="utf-8").split("## Using the runtime from Python", 1)[1]
    source = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    assert '"artifacts/runs/jokes-char-XXXX/model"' in source and "stream_batch" in source
    namespace: dict = {}
    exec(compile(source.replace('"artifacts/runs/jokes-char-XXXX/model"', repr(str(dirs["gpt"]))), "README", "exec"),
         namespace)  # noqa: S102
    out = capsys.readouterr().out.splitlines()
    finals = [line for line in out if line.endswith((" stop", " length"))]
    assert len(finals) == 2 and isinstance(namespace["session"], BatchSession)
