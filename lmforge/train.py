"""The one training loop for every model family: AdamW, warmup + cosine decay, gradient clipping and
accumulation, autocast on CUDA, optional torch.compile, periodic evaluation, best-checkpoint keeping, early
stopping, and checkpoints that resume exactly (model, optimizer, RNG and data position)."""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from lmforge import distributed
from lmforge.config import TrainConfig
from lmforge.errors import LmforgeError
from lmforge.evaluate import evaluate_tokens

LogFn = Callable[[dict, int], None]
ProgressFn = Callable[[int, int, float, float], None]  # (step, max_steps, loss, tokens/s)


def pick_device(requested: str = "auto") -> str:
    if requested != "auto":
        if requested == "cuda" and not torch.cuda.is_available():
            raise LmforgeError("train.device=cuda but no CUDA GPU is visible", hint="--set train.device=auto")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def autocast_for(device: str, dtype: str):
    """bf16 (or fp16) autocast on CUDA; plain fp32 elsewhere."""
    if device != "cuda" or dtype == "float32":
        return nullcontext(), None
    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    torch_dtype = getattr(torch, dtype)
    scaler = torch.amp.GradScaler("cuda") if torch_dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=torch_dtype), scaler


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: str) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=device == "cuda")


@dataclass
class TrainResult:
    steps: int
    best_val_loss: float
    final_train_loss: float
    history: list[dict] = field(default_factory=list)
    tokens_per_s: float = 0.0
    wall_s: float = 0.0
    device: str = "cpu"
    resumed_from: int = 0
    stopped_early: bool = False


class Checkpoints:
    """ckpt_dir/last and ckpt_dir/best, each a directory (model.safetensors, optimizer.pt, state.json),
    replaced atomically: the previous good one stays until the new one is complete."""

    def __init__(self, ckpt_dir: Path):
        self.dir = Path(ckpt_dir)

    def save(self, name: str, model, optimizer, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.{os.getpid()}.tmp"
        for stale in self.dir.glob(f".{name}.*.tmp"):  # left by a process killed mid-write (or by this one)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        try:
            tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
            (tmp / "model.safetensors").write_bytes(save(_untie(tensors)))  # an OSError (not a Rust one) on a full disk
            if optimizer is not None:
                rng = {"torch": torch.get_rng_state(), "data": state.pop("data_rng")}
                if torch.cuda.is_available():
                    rng["cuda"] = torch.cuda.get_rng_state_all()
                torch.save({"optimizer": optimizer.state_dict(), "rng": rng}, tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps(state))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        except BaseException:  # e.g. a full disk: leave no half-written directory, keep the previous one
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        target, old = self.dir / name, self.dir / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)

    def path(self, name: str) -> Path | None:
        for candidate in (self.dir / name, self.dir / f".{name}.old"):
            if (candidate / "state.json").is_file():
                return candidate
        return None

    def load_model(self, name: str, model) -> dict:
        path = self.path(name)
        if path is None:
            raise LmforgeError(f"no {name} checkpoint in {self.dir}", hint="train first")
        try:
            tensors = load_file(str(path / "model.safetensors"))
            model.load_state_dict(_retie(tensors, model), strict=True)
            return json.loads((path / "state.json").read_text())
        except (OSError, RuntimeError, ValueError, SafetensorError, json.JSONDecodeError) as exc:
            raise LmforgeError(f"checkpoint {path} is corrupted: {str(exc).splitlines()[0][:200]}",
                               hint=f"delete {path} to start over") from None

    def load_training(self, name: str, model, optimizer) -> tuple[dict, torch.Tensor]:
        state = self.load_model(name, model)
        path = self.path(name)
        try:
            blob = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        except Exception as exc:  # a truncated zip raises several types
            raise LmforgeError(f"checkpoint {path}/optimizer.pt is corrupted: {str(exc)[:200]}",
                               hint=f"delete {path} to start over") from None
        optimizer.load_state_dict(blob["optimizer"])
        torch.set_rng_state(blob["rng"]["torch"])
        if "cuda" in blob["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
        return state, blob["rng"]["data"]


def _untie(tensors: dict) -> dict:
    """safetensors refuses shared storage: store tied weights once."""
    seen, out = {}, {}
    for k, v in tensors.items():
        key = (v.data_ptr(), v.shape)
        if key in seen:
            continue
        seen[key] = k
        out[k] = v
    return out


def _retie(tensors: dict, model) -> dict:
    expected = model.state_dict()
    for k in expected:
        if k not in tensors:
            for other, value in expected.items():
                if other in tensors and value.data_ptr() == expected[k].data_ptr():
                    tensors[k] = tensors[other]
    return tensors


def get_batch(data: np.ndarray, block_size: int, batch_size: int, gen: torch.Generator, device: str):
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=gen)
    xy = torch.from_numpy(np.stack([data[i:i + block_size + 1].astype(np.int64) for i in ix.tolist()]))
    if device == "cuda":
        xy = xy.pin_memory().to(device, non_blocking=True)
    else:
        xy = xy.to(device)
    return xy[:, :-1], xy[:, 1:]


def train(model: torch.nn.Module, train_data: np.ndarray, val_data: np.ndarray, block_size: int,
          cfg: TrainConfig, ckpt_dir: Path, log: LogFn | None = None, resume: bool = True,
          progress: ProgressFn | None = None, on_eval: Callable[[torch.nn.Module, int], None] | None = None
          ) -> TrainResult:
    """Train `model` on token arrays; checkpoints go to ckpt_dir/{last,best}. Returns the best-val model loaded.
    Under torchrun (more than one process) the model is wrapped in DistributedDataParallel: each rank draws its own
    batches, gradients are averaged, rank 0 alone evaluates, logs and writes checkpoints, every rank resumes."""
    for name, data in (("train", train_data), ("val", val_data)):
        if len(data) <= block_size + 1:
            raise LmforgeError(f"the {name} split has {len(data)} tokens, fewer than one context window "
                               f"({block_size + 1})", hint="use a larger corpus or --set model.block_size=SMALLER")
    device = pick_device(cfg.device)
    ddp = distributed.setup(device)  # None in a single process
    rank = ddp.rank if ddp else 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + rank)
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    autocast, scaler = autocast_for(device, cfg.dtype)
    data_gen = torch.Generator().manual_seed(cfg.seed + rank)
    ckpts = Checkpoints(ckpt_dir)
    step, best_val, history, bad_evals = 0, float("inf"), [], 0
    if resume and ckpts.path("last") is not None:
        state, data_rng = ckpts.load_training("last", model, optimizer)
        if data_rng.dim() == 1:  # written by a single process
            data_rng = data_rng[None]
        if rank < len(data_rng):  # a rank beyond the saving job's world size keeps its fresh seed + rank stream
            data_gen.set_state(data_rng[rank])
        step, best_val, history, bad_evals = state["step"], state["best_val"], state["history"], state["bad_evals"]
    wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[ddp.local_rank] if device == "cuda"
                                                        else None) if ddp else model
    step_model = torch.compile(wrapped) if cfg.compile else wrapped
    resumed_from = step
    model.train()
    t0, tokens, train_loss, stopped_early = time.perf_counter(), 0, float("nan"), False
    loss_sum, loss_n = 0.0, 0
    while step < cfg.max_steps:
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(cfg.grad_accum):
            x, y = get_batch(train_data, block_size, cfg.batch_size, data_gen, device)
            sync = wrapped.no_sync() if ddp and micro < cfg.grad_accum - 1 else nullcontext()  # all-reduce once
            with sync:
                with autocast:
                    logits, _ = step_model(x)
                    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                                             y.reshape(-1))
                (scaler.scale(loss / cfg.grad_accum) if scaler else loss / cfg.grad_accum).backward()
            loss_sum += loss.item()
            loss_n += 1
            tokens += x.numel() * (ddp.world_size if ddp else 1)  # the whole job's tokens
        if scaler:
            scaler.unscale_(optimizer)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if progress and rank == 0:
            progress(step, cfg.max_steps, loss.item(), tokens / max(time.perf_counter() - t0, 1e-9))
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            train_loss = loss_sum / max(loss_n, 1)
            loss_sum, loss_n = 0.0, 0
            data_rng = torch.stack(distributed.gather(data_gen.get_state())) if ddp else data_gen.get_state()
            if rank == 0:
                val = evaluate_tokens(model, val_data, block_size, cfg.batch_size, cfg.eval_iters * cfg.batch_size,
                                      device, autocast)
                elapsed = time.perf_counter() - t0
                row = {"step": step, "train_loss": train_loss, "val_loss": val["loss"], "lr": lr,
                       "tokens_per_s": tokens / max(elapsed, 1e-9)}
                history.append(row)
                improved = val["loss"] < best_val
                if improved:
                    best_val, bad_evals = val["loss"], 0
                    ckpts.save("best", model, None, {"step": step, "val_loss": val["loss"]})
                else:
                    bad_evals += 1
                ckpts.save("last", model, optimizer, {"step": step, "best_val": best_val, "history": history,
                                                      "bad_evals": bad_evals, "data_rng": data_rng})
                if log:
                    log(row, step)
                if on_eval:  # e.g. samples at every evaluation, as seed 002's callback printed them
                    on_eval(model, step)
            if ddp:  # the other ranks wait here for rank 0's checkpoint, then take its bookkeeping
                best_val, bad_evals, history = distributed.broadcast([best_val, bad_evals, history])
            if cfg.early_stop_patience and bad_evals >= cfg.early_stop_patience:
                stopped_early = True
                break
    wall = time.perf_counter() - t0
    if ckpts.path("best") is not None:
        ckpts.load_model("best", model)
    model.eval()
    if ddp:
        distributed.teardown()
    return TrainResult(steps=step, best_val_loss=best_val, final_train_loss=history[-1]["train_loss"] if history
                       else train_loss, history=history, tokens_per_s=tokens / max(wall, 1e-9), wall_s=wall,
                       device=device, resumed_from=resumed_from, stopped_early=stopped_early)
