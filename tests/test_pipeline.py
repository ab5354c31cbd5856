"""The whole flow on real parts: a Prefect test server, an MLflow SQLite registry, onnxruntime sessions."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BEATS_UNIFORM, REPO, TINY, expected_provider, uniform_loss


@pytest.fixture(scope="module")
def run_result(prefect_server):
    from lmforge.flows.pipeline import pipeline

    return pipeline(preset="jokes-char", overrides={**TINY, "train.seed": 2024})  # a run dir of its own


def test_flow_registers_candidate_with_exported_dir(run_result):
    from lmforge.registry.tracking import client

    c = client()
    mv = c.get_model_version_by_alias("jokes-char", "candidate")
    assert str(mv.version) == run_result["model_version"]
    assert mv.run_id == run_result["run_id"]
    from lmforge.registry.review import facts

    tags = facts(mv)  # the flat tags and the lmforge.* groups
    assert float(tags["onnx_parity_max_abs"]) <= 1e-3
    model_dir = Path(run_result["model_dir"])
    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json", "lmforge.json"):
        assert (model_dir / name).is_file(), name
    manifest = json.loads((model_dir / "lmforge.json").read_text())
    assert manifest["model"]["family"] == "gpt" and manifest["model"]["n_layer"] == 1
    run = c.get_run(run_result["run_id"])
    assert run.data.params["model.n_embd"] == "32"
    history = c.get_metric_history(run_result["run_id"], "val_loss")
    assert sorted({m.step for m in history}) == [15, 30]  # each evaluation; the full-split figure at the last step
    assert run.data.metrics["val_loss"] == pytest.approx(run_result["metrics"]["val_loss"])
    for key in ("verify_fast_logit_max_abs", "verify_fast_int8_agreement", "verify_fast_int8_loss_delta"):
        # the export's checks through the runtime: logged to MLflow, in lmforge.json and on the version
        assert run.data.metrics[key] == pytest.approx(manifest["metrics"][key]), key
        assert tags[key], key
    assert run.info.status == "FINISHED"
    logged = {Path(a.path).name for a in c.list_artifacts(run_result["run_id"], "samples")}
    assert {"step-000015.txt", "step-000030.txt", "samples.json"} <= logged  # a sample at every evaluation
    text = Path(c.download_artifacts(run_result["run_id"], "samples/step-000030.txt")).read_text()
    assert text.startswith("Why")


def test_flow_metrics_are_sane(run_result):
    m = run_result["metrics"]
    assert 0 < m["val_loss"] < uniform_loss(run_result["model_dir"]) - BEATS_UNIFORM  # learnt, not uniform
    assert m["onnx_parity_max_abs"] <= 1e-3
    assert m["train_steps"] == 30
    assert run_result["samples"] and all(s.startswith("Why") for s in run_result["samples"])


def test_generate_from_registry_without_torch(run_result):
    code = ("import sys, json; from lmforge.cli import main; "
            "rc = main(['generate', '--model', 'models:/jokes-char@candidate', '--prompt', 'Why', "
            "'--max-new-tokens', '15', '--seed', '3', '--json']); "
            "assert rc == 0; assert 'torch' not in sys.modules, 'torch was imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["prompt"] == "Why" and len(result["text"]) > 0
    assert result["provider"] == expected_provider()  # the provider that ran: CUDA on a GPU machine


def test_generate_from_registry_writes_only_lmforges_lines(run_result):
    """`lmforge generate --model models:/...` as a user runs it: stdout the text, stderr one speed line and no
    MLflow progress bar or log lines (--verbose lets MLflow's show; --quiet drops the speed line too)."""
    import re

    argv = [sys.executable, "-m", "lmforge.cli", "generate", "--model", "models:/jokes-char@candidate",
            "--prompt", "Why", "--max-new-tokens", "8", "--seed", "1"]
    run = lambda *extra: subprocess.run(argv + list(extra), capture_output=True, text=True, cwd=REPO, timeout=120)
    plain, verbose, quiet = run(), run("--verbose"), run("--quiet")
    assert plain.returncode == verbose.returncode == quiet.returncode == 0, plain.stderr[-2000:]
    assert plain.stdout.startswith("Why") and plain.stdout == quiet.stdout == verbose.stdout
    lines = plain.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"8 tokens in [\d.]+ s: [\d.]+ tokens/s, time to first token \d+ ms, "
                                            r"finish length \[\w+ExecutionProvider, fp32\]", lines[0]), lines
    assert quiet.stderr == ""
    assert "Downloading artifacts" in verbose.stderr  # what the quiet default hides


def test_runtime_import_is_torch_free():
    code = "import sys, lmforge.runtime; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr


def test_same_seed_same_text_from_exported_dir(run_result):
    from lmforge.runtime import Generator

    gen = Generator(run_result["model_dir"])
    a = gen.generate("Why", max_new_tokens=20, temperature=1.0, seed=7)
    b = gen.generate("Why", max_new_tokens=20, temperature=1.0, seed=7)
    assert a == b
    assert gen.generate(["Why", "A"], max_new_tokens=10, temperature=0)[0] == gen.generate("Why", max_new_tokens=10,
                                                                                            temperature=0)


def test_runtime_only_install_generates_and_explains_the_pipeline_extra(run_result):
    """As after `pip install lmforge` (no [pipeline] extra): pipeline packages cannot be imported at all."""
    code = f"""
import importlib.abc, json, sys
BLOCKED = {{"torch", "prefect", "mlflow", "onnx", "pandas", "pyjokes", "safetensors", "rich", "matplotlib"}}
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name.split(".")[0])
sys.meta_path.insert(0, NotInstalled())
from lmforge.cli import main
assert main(["generate", "--model", {run_result["model_dir"]!r}, "--prompt", "Why", "--max-new-tokens", "5",
             "--json"]) == 0
print("RUN", main(["run", "--set", "train.max_steps=1"]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[0])["prompt"] == "Why"
    assert lines[-1] == "RUN 2"
    assert 'pip install "lmforge[pipeline,cpu]"' in out.stderr and "needs prefect" in out.stderr
