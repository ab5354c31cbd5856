"""Hostile model directories and over-limit requests (issue #30): whoever writes a model directory controls its
lmforge.json and tokenizer.json, whoever reaches a served model its requests. Each crafted directory is refused by
`lmforge generate` with exactly one `error:` line and exit 2 before anything is allocated for it (a Rust panic in
the tokenizer included); each request over a serving limit is a RequestError naming the limit."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_bad_input import tiny_model_dir

from conftest import REPO, assert_error_line
from lmforge.cli import main
from lmforge.runtime import Generator, ModelDirError, RequestError, RowRequest

CATASTROPHIC = {"type": "Replace", "pattern": {"Regex": "(a+)+b"}, "content": "x"}  # backtracks on a...ac


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("hostile-model") / "model")


def deep(n: int) -> str:
    return "[" * n + "]" * n


# (name, how lmforge.json is changed, a word the error line names)
MANIFESTS = [
    ("huge vocab_size", lambda m: m["model"].update(vocab_size=10**12), "vocab_size"),
    ("vocab_size of the wrong type", lambda m: m["model"].update(vocab_size="50257"), "vocab_size"),
    ("vocab_size the graph does not have", lambda m: m["model"].update(vocab_size=5000), "vocab_size"),
    ("huge n_head", lambda m: m["model"].update(n_head=10**6), "n_head"),
    ("n_head the graph does not have", lambda m: m["model"].update(n_head=64), "n_head"),
    ("head_dim the graph does not have", lambda m: m["model"].update(head_dim=4096), "head_dim"),
    ("huge block_size", lambda m: m["model"].update(block_size=10**9), "block_size"),
    ("block_size past the graph's positions", lambda m: m["model"].update(block_size=1 << 20), "position"),
    ("huge recurrent state", lambda m: m["io"].update(state=[{"input": "s", "output": "t", "kind": "rnn",
                                                               "shape": [10**9, "batch", 10**9]}]), "shape"),
    ("io.state not a list", lambda m: m["io"].update(state="past"), "io state"),
    ("io.state entry not an object", lambda m: m["io"]["state"].__setitem__(0, 5), "io state[0]"),
    ("io not an object", lambda m: m.update(io=[]), "'io'"),
    ("io.fast.rows_in_pairs not a list", lambda m: m["io"]["fast"].update(rows_in_pairs="int8"), "rows_in_pairs"),
    ("huge io.fast.rows_in_pairs", lambda m: m["io"]["fast"].update(rows_in_pairs=["int8"] * 10**5), "rows_in_pairs"),
    ("io.fast.rows_in_pairs of numbers", lambda m: m["io"]["fast"].update(rows_in_pairs=[4]), "rows_in_pairs"),
    ("io.fast.rows_graph not an object", lambda m: m["io"]["fast"].update(rows_graph=8), "rows_graph"),
    ("huge io.fast.rows_graph", lambda m: m["io"]["fast"].update(rows_graph={"rows": 10**6}), "rows_graph.rows"),
    ("io.fast.rows_graph of one row", lambda m: m["io"]["fast"].update(rows_graph={"rows": 1}), "rows_graph.rows"),
    ("files a list", lambda m: m.update(files=["model.onnx"]), "'files'"),
    ("files a string", lambda m: m.update(files="model.onnx"), "'files'"),
    ("files entry a number", lambda m: m["files"].update(fp32=5), "files.fp32"),
    ("files entry null", lambda m: m["files"].update(fp32=None), "files.fp32"),
    ("listed variant outside", lambda m: m["files"].update({"genai-int4": "../../etc/passwd"}), "lies outside"),
    ("absolute listed variant", lambda m: m["files"].update(int8="/etc/passwd"), "lies outside"),
    ("genai graph outside", lambda m: m.update(genai={"graphs": {"int4": "../x.onnx"}}), "lies outside"),
    ("eos beyond the vocabulary", lambda m: m["tokens"].update(eos=10**9), "tokens.eos"),
    ("bos of the wrong type", lambda m: m["tokens"].update(bos="<s>"), "tokens.bos"),
    ("tokenizer not an object", lambda m: m.update(tokenizer="tokenizer.json"), "'tokenizer'"),
    ("negative temperature", lambda m: m["generation"].update(temperature=-1), "temperature"),
    ("top_p of 7", lambda m: m["generation"].update(top_p=7), "top_p"),
    ("top_k of -3", lambda m: m["generation"].update(top_k=-3), "top_k"),
    ("max_new_tokens of 0", lambda m: m["generation"].update(max_new_tokens=0), "max_new_tokens"),
    ("huge limit", lambda m: m.update(limits={"max_new_tokens": 10**18}), "max_new_tokens"),
    ("unknown limit", lambda m: m.update(limits={"max_tokens_ever": 5}), "max_tokens_ever"),
    ("limits not an object", lambda m: m.update(limits=[1]), "limits"),
]


def rewrite(d: Path, change) -> None:
    manifest = json.loads((d / "lmforge.json").read_text())
    change(manifest)
    (d / "lmforge.json").write_text(json.dumps(manifest))


def generate(capsys, d: Path, *extra: str) -> tuple[int, str]:
    rc = main(["generate", "--model", str(d), "--prompt", "why", "--max-new-tokens", "3", *extra])
    return rc, capsys.readouterr().err.strip()


def refused(rc: int, err: str, needle: str) -> None:
    assert rc == 2, err
    assert_error_line(err)  # the runtime's ModelDirError/RequestError carries its fix
    assert needle in err, (needle, err)


@pytest.mark.parametrize("name,change,needle", MANIFESTS, ids=[m[0] for m in MANIFESTS])
def test_hostile_manifest_is_one_error_line(model_dir, tmp_path, capsys, name, change, needle):
    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    rewrite(d, change)
    refused(*generate(capsys, d), needle)
    with pytest.raises(ModelDirError):
        Generator(d)


@pytest.mark.parametrize("content,needle", [
    (lambda m: deep(200_000).encode(), "nested too deeply"),
    (lambda m: json.dumps(m).replace('"vocab_size": ', '"vocab_size": 1' + "0" * 5000, 1).encode(), "not valid JSON"),
    (lambda m: json.dumps({**m, "metrics": {"padding": "x" * (5 << 20)}}).encode(), "bytes, over"),
    (lambda m: json.dumps([m]).encode(), "JSON object"),
    (lambda m: b'{"format": "\xff\xfe"}', "not valid JSON"),
], ids=["deeply nested", "a 5000-digit integer", "5 MB", "a list", "not UTF-8"])
def test_manifest_that_is_not_an_lmforge_json_is_one_error_line(model_dir, tmp_path, capsys, content, needle):
    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    (d / "lmforge.json").write_bytes(content(json.loads((d / "lmforge.json").read_text())))
    refused(*generate(capsys, d), needle)


def test_tokenizer_with_ids_past_the_graphs_vocabulary(model_dir, tmp_path, capsys):
    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["added_tokens"].append({"id": 100_000, "content": "<evil>", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    (d / "tokenizer.json").write_text(json.dumps(tok))
    refused(*generate(capsys, d), "does not belong to this model")


def test_tokenizer_json_nested_too_deeply(model_dir, tmp_path, capsys):
    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    tok = json.loads((d / "tokenizer.json").read_text())
    (d / "tokenizer.json").write_text(json.dumps(tok)[:-1] + ', "extra": ' + deep(100_000) + "}")
    refused(*generate(capsys, d), "cannot read tokenizer")


def with_normalizer(model_dir: Path, d: Path, normalizer: dict) -> Path:
    shutil.copytree(model_dir, d)
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["normalizer"] = normalizer
    (d / "tokenizer.json").write_text(json.dumps(tok))
    return d


def run_cli(*argv: str | bytes) -> subprocess.CompletedProcess:
    """`lmforge generate` in a process of its own, as a user runs it (real argv bytes, real stderr: a Rust panic
    writes its message and backtrace to file descriptor 2 itself)."""
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *argv], capture_output=True, cwd=REPO, timeout=120,
                          env={**__import__("os").environ, "RUST_BACKTRACE": "1"})


def test_catastrophic_regex_panic_at_load_is_one_error_line(model_dir, tmp_path):
    """The normaliser's regex gives up on the load-time probe text (a run of a's): the Rust panic is caught."""
    d = with_normalizer(model_dir, tmp_path / "model", CATASTROPHIC)
    with pytest.raises(ModelDirError, match="PanicException"):  # not a BaseException past `except Exception`
        Generator(d)
    out = run_cli("generate", "--model", str(d), "--prompt", "why")
    err = out.stderr.decode().strip()
    assert out.returncode == 2 and assert_error_line(err)
    assert "PanicException" in err and "tokenizer" in err and "re-export the model" in err


def test_catastrophic_regex_panic_on_a_prompt_is_one_error_line(model_dir, tmp_path):
    """A pattern the load-time probe does not trip, tripped by the prompt: one line, exit 2, and in an app a
    ModelDirError (an Exception), the generator still usable for other prompts."""
    d = with_normalizer(model_dir, tmp_path / "model",
                        {"type": "Replace", "pattern": {"Regex": "(w+)+h"}, "content": "x"})
    gen = Generator(d)
    with pytest.raises(ModelDirError, match="PanicException"):
        gen.generate("w" * 40 + "y", max_new_tokens=3)
    assert gen.generate("why", max_new_tokens=3, seed=0) == Generator(d).generate("why", max_new_tokens=3, seed=0)
    out = run_cli("generate", "--model", str(d), "--prompt", "w" * 40 + "y")
    err = out.stderr.decode().strip()
    assert out.returncode == 2 and assert_error_line(err)


def test_non_utf8_prompt_from_argv_is_one_error_line(model_dir):
    out = run_cli(b"generate", b"--model", str(model_dir).encode(), b"--prompt", b"caf\xe9 latin-1")
    err = out.stderr.decode().strip()
    assert out.returncode == 2 and assert_error_line(err)
    assert err.startswith("error: prompt is not valid UTF-8") and "UTF-8 locale" in err and not out.stdout


# -- serving limits ---------------------------------------------------------------------------------------------
def test_requests_over_the_limits_name_the_limit(model_dir):
    gen = Generator(model_dir)
    cases = [({"max_new_tokens": 10**9}, "limits.max_new_tokens"),
             ({"stop": ["x"] * 17}, "limits.max_stop_strings"),
             ({"stop": ["x" * 200_000]}, "limits.max_stop_chars"),
             ({"seed": -1}, "seed"), ({"max_new_tokens": "many"}, "max_new_tokens")]
    for kwargs, limit in cases:
        with pytest.raises(RequestError, match=limit):
            gen.generate("why", **kwargs)
    with pytest.raises(RequestError, match="limits.max_prompt_bytes"):
        gen.generate("é" * (1 << 19) + "!")  # 1 MiB + 1 in UTF-8, fewer characters than that
    with pytest.raises(RequestError, match="limits.max_prompt_bytes"):
        gen.stream_batch([RowRequest("why"), RowRequest("x" * (16 << 20))])  # 16 MB: refused before any work


def test_cli_request_over_a_limit_is_one_error_line(model_dir, capsys):
    refused(*generate(capsys, model_dir, "--max-new-tokens", "100000"), "limits.max_new_tokens")
    rc = main(["generate", "--model", str(model_dir), "--prompt", "why", "--stop", "s" * 5000])
    refused(rc, capsys.readouterr().err.strip(), "limits.max_stop_chars")


def test_limits_come_from_the_model_and_an_app_may_only_lower_them(model_dir, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    rewrite(d, lambda m: m.update(limits={"max_new_tokens": 12, "max_stop_strings": 2}))
    gen = Generator(d)
    assert (gen.limits.max_new_tokens, gen.limits.max_stop_strings, gen.limits.max_prompt_bytes) == (12, 2, 1 << 20)
    with pytest.raises(RequestError, match="over the limit of 12"):
        gen.generate("why", max_new_tokens=13)
    events = list(gen.stream_batch([RowRequest("why", temperature=0)]))  # the default, 20, is cut to the limit
    assert events[-1].completion_tokens <= 12
    lower = Generator(d, limits={"max_new_tokens": 5, "deadline_s": 10})
    assert (lower.limits.max_new_tokens, lower.limits.deadline_s) == (5, 10.0)
    with pytest.raises(RequestError, match="max_new_tokens must be an integer in .0, 12."):
        Generator(d, limits={"max_new_tokens": 13})  # an app cannot lift the model's limit
    with pytest.raises(RequestError, match="unknown limit"):
        Generator(d, limits={"max_tokens": 5})


def test_a_long_prompt_is_cut_before_it_is_tokenised(model_dir, tmp_path):
    """A prompt far longer than the context (under a raised byte limit): only a tail of it reaches the
    tokenizer, and the ids kept are those of encoding it whole."""
    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    rewrite(d, lambda m: m.update(limits={"max_prompt_bytes": 32 << 20}))
    gen = Generator(d)
    seen = []
    real = gen.text.encode

    def recording(text, **kw):
        seen.append(len(text))
        return real(text, **kw)

    gen.text.encode = recording
    prompt = "why not? a joke. hello world, " * (600_000)  # 18 MB
    ids = gen.prompt_ids(prompt)
    assert max(seen) < 10_000 and len(ids) == gen.block_size - 1
    assert ids == gen.encode(prompt[-5000:])[-(gen.block_size - 1):]
    assert gen.generate(prompt, max_new_tokens=3, seed=0) == gen.generate(prompt[-5000:], max_new_tokens=3, seed=0)
    assert max(seen) < 10_000  # generate() too tokenised only a tail


def test_a_long_stop_string_is_held_back_and_matched(model_dir, tmp_path):
    """The stop-string check feeds each new character once to an automaton per stop string (linear time:
    benchmarks/stops.py measures it against the quadratic check it replaced); a 200,000-character stop string
    is held back character by character and still ends the text when another one matches."""
    from lmforge.runtime.stops import StopStrings

    s = StopStrings(("a" * 200_000,))
    for n in range(1, 3001):  # each "a" extends the held prefix by one; none completes the stop string
        assert s.feed("a") is None and s.held() == n
    assert s.feed("b") is None and s.held() == 0
    stop = "a" * 200_000
    d = tmp_path / "model"
    shutil.copytree(model_dir, d)
    rewrite(d, lambda m: m.update(limits={"max_stop_chars": 300_000}))
    gen = Generator(d)
    text = gen.generate("why", max_new_tokens=20, temperature=0)
    assert gen.generate("why", max_new_tokens=20, temperature=0, stop=[stop, text[3:5]]) == text[:text.index(text[3:5])]


def test_a_rows_graph_that_is_not_the_one_lmforge_json_names_is_refused(model_dir, tmp_path):
    """model.fast.rows.onnx replaced by another graph, or lmforge.json naming another number of rows: the batch
    that would load it is refused with a ModelDirError before its first step; other batches never load it."""
    from lmforge.export.fast import build_rows_graph

    dirs = []
    for name, rows, graph in (("swapped", 8, "model.fast.onnx"), ("fewer", 4, None)):
        directory = tmp_path / name
        shutil.copytree(model_dir, directory)
        if graph:
            shutil.copy(directory / graph, directory / "model.fast.rows.onnx")
        else:
            build_rows_graph(directory / "model.fast.onnx", directory / "model.fast.rows.onnx", 8)
        manifest = json.loads((directory / "lmforge.json").read_text())
        manifest["io"]["fast"]["rows_graph"] = {"rows": rows}
        manifest["files"]["fast-rows"] = "model.fast.rows.onnx"
        (directory / "lmforge.json").write_text(json.dumps(manifest))
        dirs.append((directory, rows))
    for directory, rows in dirs:
        gen = Generator(directory, batch_lookahead=True)
        assert gen.rows_graph == rows
        assert gen.generate("ab", max_new_tokens=3, temperature=0) == Generator(model_dir).generate(
            "ab", max_new_tokens=3, temperature=0)
        with pytest.raises(ModelDirError, match="model.fast.rows.onnx does not have the inputs") as info:
            gen.generate(["ab"] * rows, max_new_tokens=3)
        assert "\n" not in str(info.value)
