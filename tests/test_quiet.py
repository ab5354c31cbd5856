"""Quiet output (issue #27): the CLI writes lmforge's own lines, not third-party chatter. An export logs none of
onnxruntime's quantiser lines ("Please consider to run pre-processing before quantization" from every
quantize_dynamic call; a line per node from the int4 quantiser), and native libraries' own stderr writes are
silenced around `lmforge generate` unless --verbose. (`generate --model models:/...` without MLflow's download
progress bar: tests/test_pipeline.py::test_generate_from_registry_writes_only_lmforges_lines.)"""
from __future__ import annotations

import logging
import os
import subprocess
import sys

from conftest import REPO, tiny_random_gpt

from lmforge.data.tokenize import train_char


def test_export_logs_no_onnxruntime_quantiser_lines(tmp_path, caplog, capfd):
    from lmforge.core.config import ExportConfig
    from lmforge.export.modeldir import export_model_dir

    tok = train_char(["abc def"])
    tok.save(str(tmp_path / "tokenizer.json"))
    model = tiny_random_gpt(tok.get_vocab_size())
    manifest = {"name": "q", "tokenizer": {"kind": "char", "file": "tokenizer.json"},
                "tokens": {"pad": 0, "unk": 1, "bos": None, "eos": None}, "generation": {}}
    handlers = list(logging.getLogger().handlers)
    with caplog.at_level(logging.INFO):  # every record the root logger passes on, INFO and up
        out, _ = export_model_dir(model, tmp_path / "tokenizer.json", tmp_path / "m", manifest,
                                  ExportConfig(int8=True, optimize=False, int4=True))
    assert {"model.int8.onnx", "model.fast.int8.onnx", "model.genai.int4.onnx"} <= {p.name for p in out.iterdir()}
    noisy = [r.getMessage()[:80] for r in caplog.records if r.name == "root" or r.name.startswith("onnxruntime")]
    assert noisy == []
    err = capfd.readouterr().err
    assert "pre-processing" not in err and "quantize" not in err
    assert logging.getLogger().handlers == handlers  # the int4 quantiser's logging.basicConfig taken back


def test_generate_native_stderr_silenced_unless_verbose(tmp_path):
    """A tokenizer whose regex gives up makes the Rust library print a panic message and backtrace straight to
    file descriptor 2: without --verbose only lmforge's one error line shows; with it, the library's own too."""
    import json
    import shutil

    from test_bad_input import tiny_model_dir

    d = tiny_model_dir(tmp_path / "model")
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Replace", "pattern": {"Regex": "(w+)+h"}, "content": "x"}
    (d / "tokenizer.json").write_text(json.dumps(tok))
    argv = [sys.executable, "-m", "lmforge.cli", "generate", "--model", str(d), "--prompt", "w" * 40 + "y"]
    env = {**os.environ, "RUST_BACKTRACE": "1"}
    quiet = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    loud = subprocess.run(argv + ["--verbose"], capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert quiet.returncode == loud.returncode == 2
    assert len(quiet.stderr.strip().splitlines()) == 1 and quiet.stderr.startswith("error: ")
    assert "panicked" in loud.stderr and loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip()
    shutil.rmtree(d)


def test_every_generate_flag_has_help_and_the_speed_line(capsys, tmp_path):
    """`lmforge generate --help` explains every flag; a run prints tokens/s and the time to the first token on
    stderr (one line), which --quiet hides; --json carries the same figures."""
    import json
    import re

    from test_bad_input import tiny_model_dir

    from lmforge.cli import build_parser, main

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["generate"]
    flags = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    assert len(flags) == 16 and [a.dest for a in flags if not a.help] == []
    d = tiny_model_dir(tmp_path / "model")
    base = ["generate", "--model", str(d), "--prompt", "why", "--max-new-tokens", "6", "--temperature", "0"]
    assert main(base) == 0
    out, err = capsys.readouterr()
    assert out.startswith("why") and re.fullmatch(
        r"\d tokens in [\d.]+ s: [\d.]+ tokens/s, time to first token \d+ ms, finish (length|stop) "
        r"\[\w+ExecutionProvider, fp32\]", err.strip()), err
    assert main(base + ["--quiet"]) == 0 and capsys.readouterr().err == ""
    assert main(base + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["completion_tokens"] <= 6 and result["tokens_per_second"] > 0
    assert result["time_to_first_token_s"] > 0 and result["finish_reason"] in ("length", "stop")
