"""Crashes: `kill -9` mid-training resumes to the same final loss as an uninterrupted run; a crash while writing a
checkpoint keeps the previous one; a failed export leaves no model directory and no registered version.
(An interrupted download resumes with an HTTP Range request: tests/test_download.py
::test_resumes_with_range_after_dropped_connection.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY
from lmforge.core.errors import LmforgeError

# Deterministic CPU training on a synthetic corpus; the progress hook paces it so a kill lands mid-run.
TRAIN_SCRIPT = """
import json, sys, time
from pathlib import Path
import numpy as np, torch
from lmforge.core.config import ModelConfig, TrainConfig
from lmforge.models import build_model
from lmforge.training.train import Hooks, train

ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
torch.use_deterministic_algorithms(True)
rng = np.random.default_rng(0)
data = (np.cumsum(rng.integers(1, 3, 6000)) % 23).astype(np.uint16)  # a learnable pattern
model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), 23)
cfg = TrainConfig(max_steps=100, batch_size=4, eval_interval=10, eval_iters=2, warmup_steps=10, device="cpu",
                  threads=1, lr=3e-3, log_interval=1)
pace = lambda step, total, loss, tps: time.sleep(0.02)
r = train(model, data[:5000], data[5000:], 16, cfg, ckpt, hooks=Hooks(progress=pace))
hist = [{k: h[k] for k in ("step", "train_loss", "val_loss", "lr")} for h in r.history]
out.write_text(json.dumps({"best_val_loss": r.best_val_loss, "final_train_loss": r.final_train_loss,
                           "history": hist, "resumed_from": r.resumed_from}))
"""


def start_training(tmp: Path, name: str) -> subprocess.Popen:
    script = tmp / "train_script.py"
    script.write_text(TRAIN_SCRIPT)
    ckpt, out = tmp / name / "ckpt", tmp / name / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(script), str(ckpt), str(out)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, tmp: Path, name: str) -> dict:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads((tmp / name / "result.json").read_text())


def kill_mid_run(proc: subprocess.Popen, tmp: Path, name: str, kill_after_step: int) -> None:
    state, out = tmp / name / "ckpt" / "last" / "state.json", tmp / name / "result.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["step"] >= kill_after_step:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()


def test_kill_9_then_rerun_reaches_the_same_final_loss(tmp_path):
    ref = start_training(tmp_path, "reference")  # the uninterrupted run, alongside the one to kill
    kill_mid_run(start_training(tmp_path, "crashed"), tmp_path, "crashed", kill_after_step=40)
    killed_at = json.loads((tmp_path / "crashed" / "ckpt" / "last" / "state.json").read_text())["step"]
    assert 40 <= killed_at < 100
    resumed = finish(start_training(tmp_path, "crashed"), tmp_path, "crashed")
    reference = finish(ref, tmp_path, "reference")
    assert resumed["resumed_from"] == killed_at
    assert resumed["history"] == reference["history"]  # bitwise: every eval's train/val loss and lr
    assert resumed["best_val_loss"] == reference["best_val_loss"]
    assert resumed["final_train_loss"] == reference["final_train_loss"]
    assert reference["history"][-1]["val_loss"] < reference["history"][0]["val_loss"]  # it did learn


@pytest.fixture
def saved(tmp_path):
    import torch

    from lmforge.core.config import ModelConfig, TrainConfig
    from lmforge.models import build_model
    from lmforge.training.checkpoint import Checkpoints
    from lmforge.training.train import make_optimizer

    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), 10)
    opt = make_optimizer(model, TrainConfig(), "cpu")
    ck = Checkpoints(tmp_path / "ckpt")
    ck.save("last", model, opt, {"step": 7, "data_rng": torch.Generator().get_state()})
    return ck, model, opt


def test_stale_temp_from_a_crashed_write_is_ignored_then_cleaned(saved):
    import torch

    ck, model, opt = saved
    stale = ck.dir / ".last.99999.tmp"  # what a process killed while writing leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\x00" * 10)
    state, _ = ck.load_training("last", model, opt)
    assert state["step"] == 7
    ck.save("last", model, opt, {"step": 8, "data_rng": torch.Generator().get_state()})
    assert sorted(p.name for p in ck.dir.iterdir()) == ["last"]
    assert ck.load_model("last", model)["step"] == 8


def test_crash_between_the_two_renames_keeps_the_previous_checkpoint(saved):
    import torch

    ck, model, opt = saved
    (ck.dir / "last").rename(ck.dir / ".last.old")  # killed after moving the old one aside, before the new one landed
    state, _ = ck.load_training("last", model, opt)
    assert state["step"] == 7
    ck.save("last", model, opt, {"step": 8, "data_rng": torch.Generator().get_state()})
    assert sorted(p.name for p in ck.dir.iterdir()) == ["last"]


def test_failed_export_leaves_no_directory_and_no_registered_version(prefect_server, tmp_path):
    from lmforge.flows.pipeline import pipeline
    from lmforge.core.config import load_config
    from lmforge.core.layout import RunLayout
    from lmforge.registry.tracking import client

    preset = tmp_path / "exportcrash.toml"
    preset.write_text((REPO / "configs" / "jokes-char.toml").read_text())
    overrides = {**TINY, "train.max_steps": 4, "train.eval_interval": 2, "export.parity_tolerance": -1.0}  # every export "fails" its parity check
    with pytest.raises(LmforgeError, match="ONNX export differs from torch"):
        pipeline(preset=str(preset), overrides=overrides)
    (where,) = RunLayout.for_config(load_config(str(preset), overrides)).run_dirs()
    assert (where.ckpt / "best").is_dir()  # training finished; only the export failed
    assert not where.model.exists()
    assert not [p for p in where.root.iterdir() if p.name.endswith(".tmp")]
    assert client().search_model_versions("name='exportcrash'") == []


def test_the_grad_scaler_state_is_checkpointed(saved):
    """An fp16 run's loss scale resumes where it was (torch's GradScaler, the CPU flavour of the same class)."""
    import torch

    ck, model, opt = saved
    scaler = torch.amp.GradScaler("cpu", init_scale=1234.0, growth_interval=7)
    ck.save("last", model, opt, {"step": 9, "data_rng": torch.Generator().get_state()}, scaler)
    fresh = torch.amp.GradScaler("cpu")
    ck.load_training("last", model, opt, fresh)
    assert fresh.get_scale() == 1234.0 and fresh.state_dict()["growth_interval"] == 7
