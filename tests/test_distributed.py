"""DDP under torchrun: two CPU processes on gloo train a tiny GPT and end with identical weights that differ from
the initial ones; `train.nproc=2` through the train task's launch path returns the same summary as in-process
training and leaves a checkpoint that later steps load."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from conftest import REPO
from lmforge.training import distributed
from lmforge.core.config import load_config
from lmforge.data.shards import write_shards
from lmforge.models import build_model
from lmforge.training.checkpoint import Checkpoints
from lmforge.training.train import TrainResult

TORCHRUN = Path(sys.executable).with_name("torchrun")

# Every rank trains the same tiny GPT on its own batches (grad_accum=2 exercises no_sync) and saves its weights.
RANK_SCRIPT = """
import os, sys
from pathlib import Path
import numpy as np, torch
from safetensors.torch import save_file
from lmforge.core.config import ModelConfig, TrainConfig
from lmforge.models import build_model
from lmforge.training.distributed import exit_now
from lmforge.training.train import train

out, rank = Path(sys.argv[1]), os.environ["RANK"]
rng = np.random.default_rng(0)
data = (np.cumsum(rng.integers(1, 3, 6000)) % 23).astype(np.uint16)
torch.manual_seed(int(rank))  # different initial weights per rank: DDP must broadcast rank 0's
model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), 23)
save_file({k: v.clone() for k, v in model.state_dict().items()}, out / f"init{rank}.safetensors")
cfg = TrainConfig(max_steps=6, batch_size=4, grad_accum=2, eval_interval=3, eval_iters=2, warmup_steps=2,
                  device="cpu", threads=1, lr=3e-3)
result = train(model, data[:5000], data[5000:], 16, cfg, out / "ckpt")
assert not torch.distributed.is_initialized()
save_file({k: v.clone() for k, v in model.state_dict().items()}, out / f"rank{rank}.safetensors")
(out / f"steps{rank}.txt").write_text(str(result.steps))
exit_now(0)  # as lmforge.training.distributed's entry point ends
"""


def test_two_gloo_ranks_end_with_identical_trained_weights(tmp_path):
    script = tmp_path / "rank_script.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(tmp_path / f"steps{r}.txt").read_text() for r in (0, 1)] == ["6", "6"]
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    init0, init1 = (load_file(str(tmp_path / f"init{r}.safetensors")) for r in (0, 1))
    assert rank0.keys() == rank1.keys() == init0.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert not all(torch.equal(init0[k], init1[k]) for k in init0)  # the ranks really started apart
    assert not all(torch.equal(rank0[k], init0[k]) for k in rank0)  # and they trained
    last = json.loads((tmp_path / "ckpt" / "last" / "state.json").read_text())
    assert last["step"] == 6 and [h["step"] for h in last["history"]] == [3, 6]  # rank 0 wrote, once per eval
    blob = torch.load(tmp_path / "ckpt" / "last" / "optimizer.pt", weights_only=True)
    data_rng = blob["rng"]["data"]
    assert data_rng.shape[0] == 2 and not torch.equal(data_rng[0], data_rng[1])  # each rank had its own batches


def test_nproc_2_launch_returns_the_training_summary(tmp_path):
    rng = np.random.default_rng(1)
    ids = (np.cumsum(rng.integers(1, 3, 4000)) % 23).astype(np.int64)
    is_val = np.array([False] * 7 + [True])
    write_shards([(ids, np.full(8, 500))], is_val, tmp_path / "data", vocab_size=23)
    cfg = load_config(overrides={"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 16, "model.block_size": 16,
                                 "train.max_steps": 4, "train.eval_interval": 2, "train.eval_iters": 2,
                                 "train.batch_size": 4, "train.warmup_steps": 1, "train.device": "cpu",
                                 "train.threads": 1, "train.nproc": 2})
    summary = distributed.launch(cfg, tmp_path / "data", 23, tmp_path / "ckpt", timeout_s=120)
    result = TrainResult(**summary)  # exactly the fields in-process training returns
    assert set(summary) == {f.name for f in dataclasses.fields(TrainResult)}
    assert result.steps == 4 and result.resumed_from == 0 and [h["step"] for h in result.history] == [2, 4]
    assert np.isfinite(result.best_val_loss) and result.best_val_loss == min(h["val_loss"] for h in result.history)
    model = build_model(cfg.model, 23)
    state = Checkpoints(tmp_path / "ckpt").load_model("best", model)
    assert state["val_loss"] == result.best_val_loss
