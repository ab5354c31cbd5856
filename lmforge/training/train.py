"""The one training loop for every model family, read top to bottom: set up (device, seed, optimizer, autocast),
resume from ckpt/last when it is this run's, then step -> (evaluate + checkpoint every eval_interval) until
max_steps, early stopping or an interrupt (Ctrl-C, SIGTERM: a checkpoint at the step reached, then
lmforge.core.interrupt.Interrupted). AdamW with warmup + cosine decay, gradient clipping and accumulation, bf16/fp16 autocast
on CUDA (a GradScaler for fp16), optional torch.compile, DistributedDataParallel under torchrun. Checkpoints
(lmforge.training.checkpoint) resume exactly: weights, optimizer, scaler, RNG streams, data position, running loss."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lmforge.training import ddp
from lmforge.core import interrupt
from lmforge.training.checkpoint import Checkpoints, Identity, resume_point
from lmforge.core.config import TrainConfig
from lmforge.core.errors import LmforgeError
from lmforge.training.evaluate import evaluate_tokens

ProgressFn = Callable[[int, int, float, float], None]  # (step, max_steps, loss, tokens/s)


@dataclass
class Hooks:
    """What the caller sees of training: each evaluation's row, per-step progress, a sample from the model at
    every evaluation, and the one line that says whether the run starts, resumes or is already done."""
    log_eval: Callable[[dict, int], None] | None = None
    progress: ProgressFn | None = None
    sample: Callable[[torch.nn.Module, int], None] | None = None
    note: Callable[[str], None] | None = None


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


@dataclass
class Progress:
    """The loop's bookkeeping, checkpointed with the weights so a resumed run continues the same numbers."""
    step: int = 0
    best_val: float = float("inf")
    bad_evals: int = 0
    stopped_early: bool = False
    loss_sum: float = 0.0  # train loss summed since the last evaluation (its train_loss is the mean)
    loss_n: int = 0
    history: list[dict] = field(default_factory=list)

    def to_state(self) -> dict:
        return {"step": self.step, "best_val": self.best_val, "bad_evals": self.bad_evals,
                "stopped_early": self.stopped_early, "loss_sum": self.loss_sum, "loss_n": self.loss_n,
                "history": self.history}

    @classmethod
    def from_state(cls, state: dict) -> "Progress":
        return cls(state["step"], state["best_val"], state["bad_evals"], state.get("stopped_early", False),
                   state.get("loss_sum", 0.0), state.get("loss_n", 0), state["history"])


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
    """bf16 (or fp16, with a GradScaler) autocast on CUDA; plain fp32 elsewhere."""
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


def get_batch(data: np.ndarray, block_size: int, batch_size: int, gen: torch.Generator, device: str):
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=gen)
    xy = torch.from_numpy(np.stack([data[i:i + block_size + 1].astype(np.int64) for i in ix.tolist()]))
    if device == "cuda":
        xy = xy.pin_memory().to(device, non_blocking=True)
    else:
        xy = xy.to(device)
    return xy[:, :-1], xy[:, 1:]


def check_fits(train_data: np.ndarray, val_data: np.ndarray, block_size: int) -> None:
    for name, data in (("train", train_data), ("val", val_data)):
        if len(data) <= block_size + 1:
            raise LmforgeError(f"the {name} split has {len(data)} tokens, fewer than one context window "
                               f"({block_size + 1})", hint="use a larger corpus or --set model.block_size=SMALLER")


def seed_everything(cfg: TrainConfig, rank: int) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed + rank)


def train(model: torch.nn.Module, train_data: np.ndarray, val_data: np.ndarray, block_size: int,
          cfg: TrainConfig, ckpt_dir: Path, hooks: Hooks | None = None, resume: bool = True,
          identity: Identity | None = None) -> TrainResult:
    """Train `model` on token arrays; checkpoints go to ckpt_dir/{last,best}. Returns with the best-val weights
    loaded. `identity` (the run's weights hash and data fingerprint) is recorded in every checkpoint; only a
    checkpoint with the same identity is resumed. Under torchrun (more than one process) each rank draws its
    own batches, gradients are averaged, rank 0 alone evaluates, logs and writes checkpoints."""
    hooks = hooks or Hooks()
    check_fits(train_data, val_data, block_size)
    device = pick_device(cfg.device)
    group = ddp.setup(device)  # None in a single process
    rank = group.rank if group else 0
    seed_everything(cfg, rank)
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    autocast, scaler = autocast_for(device, cfg.dtype)
    data_gen = torch.Generator().manual_seed(cfg.seed + rank)
    ckpts = Checkpoints(ckpt_dir)
    run, start = Progress(), 0
    if rank == 0:  # rank 0 alone decides (and may set a foreign checkpoint aside); the others follow
        start, note = resume_point(ckpts, identity, cfg.max_steps) if resume else (0, "training from step 0")
        if hooks.note:
            hooks.note(note)
    start = ddp.broadcast(start) if group else start
    if start:
        run = restore(ckpts, model, optimizer, scaler, data_gen, rank)
    wrapped = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[group.local_rank] if device == "cuda" else None) if group else model
    step_model = torch.compile(wrapped) if cfg.compile else wrapped
    resumed_from = run.step
    model.train()
    key = identity.key() if identity else None
    t0, tokens = time.perf_counter(), 0
    while run.step < cfg.max_steps and not run.stopped_early:
        lr = lr_at(run.step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        loss = train_step(step_model, wrapped, optimizer, scaler, autocast, train_data, block_size, cfg, data_gen,
                          device, group)
        run.step += 1
        run.loss_sum, run.loss_n = run.loss_sum + loss, run.loss_n + 1
        tokens += cfg.grad_accum * cfg.batch_size * block_size * (group.world_size if group else 1)
        if hooks.progress and rank == 0:
            hooks.progress(run.step, cfg.max_steps, loss, tokens / max(time.perf_counter() - t0, 1e-9))
        at_eval = run.step % cfg.eval_interval == 0 or run.step == cfg.max_steps
        stop = stop_requested(group, at_eval)
        if at_eval:
            evaluate_and_checkpoint(run, model, val_data, block_size, cfg, device, autocast, ckpts, optimizer,
                                    scaler, data_gen, group, key, lr, tokens / (time.perf_counter() - t0),
                                    hooks)
        elif stop:  # a checkpoint at the step reached (at an eval step the evaluation has just written it)
            save_last(ckpts, run, model, optimizer, scaler, data_gen, group, key)
        if stop:
            if group:
                ddp.teardown()
            raise interrupt.Interrupted(run.step)
    wall = time.perf_counter() - t0
    if ckpts.path("best") is not None:
        ckpts.load_model("best", model)
    model.eval()
    if group:
        ddp.teardown()
    final_train = run.history[-1]["train_loss"] if run.history else float("nan")
    return TrainResult(steps=run.step, best_val_loss=run.best_val, final_train_loss=final_train,
                       history=run.history, tokens_per_s=tokens / max(wall, 1e-9), wall_s=wall, device=device,
                       resumed_from=resumed_from, stopped_early=run.stopped_early)


def trained_record(result: TrainResult, run, n_params: int):
    """What the training step hands on (lmforge.core.records.Trained) for a run directory (lmforge.core.layout.RunDir)."""
    from lmforge.training.checkpoint import weights_sha256
    from lmforge.core.records import Trained

    return Trained(run_dir=run.root, ckpt_dir=run.ckpt, steps=result.steps, best_val_loss=result.best_val_loss,
                   final_train_loss=result.final_train_loss, tokens_per_s=result.tokens_per_s, wall_s=result.wall_s,
                   device=result.device, resumed_from=result.resumed_from, stopped_early=result.stopped_early,
                   n_params=n_params, weights_sha256=weights_sha256(run.ckpt), history=result.history)


def stop_requested(group, at_eval: bool) -> bool:
    """Whether to stop after this step. One process: at any step. Under DDP every rank must stop at the same
    step, so rank 0's answer is broadcast, at evaluation steps only (a broadcast per step would cost time)."""
    if group is None:
        return interrupt.requested()
    return bool(ddp.broadcast(interrupt.requested())) if at_eval else False


def train_step(step_model, wrapped, optimizer, scaler, autocast, train_data, block_size, cfg: TrainConfig,
               data_gen, device: str, group) -> float:
    """One optimizer step over cfg.grad_accum micro-batches; returns the mean micro-batch loss."""
    total = 0.0
    for micro in range(cfg.grad_accum):
        x, y = get_batch(train_data, block_size, cfg.batch_size, data_gen, device)
        last = micro == cfg.grad_accum - 1
        with wrapped.no_sync() if group and not last else nullcontext():  # DDP: all-reduce once per step
            with autocast:
                logits, _ = step_model(x)
                loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                                         y.reshape(-1))
            scaled = loss / cfg.grad_accum
            (scaler.scale(scaled) if scaler else scaled).backward()
        total += loss.item()
    if scaler:
        scaler.unscale_(optimizer)
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / cfg.grad_accum


def evaluate_and_checkpoint(run: Progress, model, val_data, block_size, cfg: TrainConfig, device, autocast,
                            ckpts: Checkpoints, optimizer, scaler, data_gen, group, key: dict | None, lr: float,
                            tokens_per_s: float, hooks: Hooks) -> None:
    """Rank 0 evaluates, keeps the best weights and writes ckpt/last; the other ranks take its bookkeeping."""
    train_loss = run.loss_sum / max(run.loss_n, 1)
    run.loss_sum, run.loss_n = 0.0, 0
    if not group or group.rank == 0:
        val = evaluate_tokens(model, val_data, block_size, cfg.batch_size, cfg.eval_iters * cfg.batch_size,
                              device, autocast)
        row = {"step": run.step, "train_loss": train_loss, "val_loss": val["loss"], "lr": lr,
               "tokens_per_s": tokens_per_s}
        run.history.append(row)
        if val["loss"] < run.best_val:
            run.best_val, run.bad_evals = val["loss"], 0
            ckpts.save("best", model, None, {"step": run.step, "val_loss": val["loss"], "identity": key})
        else:
            run.bad_evals += 1
        run.stopped_early = bool(cfg.early_stop_patience) and run.bad_evals >= cfg.early_stop_patience
    save_last(ckpts, run, model, optimizer, scaler, data_gen, group, key)
    if not group or group.rank == 0:
        if hooks.log_eval:
            hooks.log_eval(row, run.step)
        if hooks.sample:
            hooks.sample(model, run.step)
    if group:  # the other ranks wait here for rank 0's checkpoint, then take its bookkeeping
        state = ddp.broadcast(run.to_state())
        run.best_val, run.bad_evals, run.stopped_early, run.history = (
            state["best_val"], state["bad_evals"], state["stopped_early"], state["history"])


def save_last(ckpts: Checkpoints, run: Progress, model, optimizer, scaler, data_gen, group, key: dict | None
              ) -> None:
    """ckpt/last at the current step, with every rank's data stream (all ranks call this; rank 0 writes)."""
    data_rng = torch.stack(ddp.gather(data_gen.get_state())) if group else data_gen.get_state()
    if not group or group.rank == 0:
        ckpts.save("last", model, optimizer, {**run.to_state(), "identity": key, "data_rng": data_rng},
                   scaler)


def restore(ckpts: Checkpoints, model, optimizer, scaler, data_gen: torch.Generator, rank: int) -> Progress:
    state, data_rng = ckpts.load_training("last", model, optimizer, scaler)
    if data_rng.dim() == 1:  # written by a single process
        data_rng = data_rng[None]
    if rank < len(data_rng):  # a rank beyond the saving job's world size keeps its fresh seed + rank stream
        data_gen.set_state(data_rng[rank])
    return Progress.from_state(state)
