"""The one training loop for every model family, read top to bottom as nanoGPT's train.py: set up (device,
seed, optimizer, autocast) into one state object (Loop), resume from ckpt/last when it is this run's, then
step -> (evaluate + checkpoint every eval_interval) until max_steps, early stopping or an interrupt (Ctrl-C,
SIGTERM: a checkpoint at the step reached, then lmforge.core.interrupt.Interrupted).

AdamW with warmup + cosine decay, gradient clipping and accumulation, bf16/fp16 autocast on CUDA (a GradScaler
for fp16), optional torch.compile, DistributedDataParallel under torchrun. The loss stays on the device between
evaluations: `.item()` (a device sync on a GPU) happens every train.log_interval steps and at evaluations only,
and the next batch is drawn (and its copy to the GPU started) before the current one's forward pass. Checkpoints
(lmforge.training.checkpoint) resume exactly: weights, optimizer, scaler, RNG streams, data position, running
loss."""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lmforge.core import interrupt
from lmforge.core.config import TrainConfig
from lmforge.core.errors import LmforgeError
from lmforge.core.records import StartFrom
from lmforge.training import ddp, muon
from lmforge.training.checkpoint import Checkpoints, Identity, resume_point
from lmforge.training.evaluate import evaluate_tokens
from lmforge.training.schedule import lr_at
from lmforge.training.threads import ThreadPicker
from lmforge.training.warmstart import continue_note, load_warm_start

ProgressFn = Callable[[int, int, float, float], None]  # (step, max_steps, loss, tokens/s)


@dataclass
class Hooks:
    """What the caller sees of training: each evaluation's row, progress every train.log_interval steps, a sample
    from the model at every evaluation, and the one line that says whether the run starts, resumes or is done."""
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
    loss_sum: float | torch.Tensor = 0.0  # train loss summed since the last evaluation, float64 on the device
    loss_n: int = 0
    history: list[dict] = field(default_factory=list)

    def to_state(self) -> dict:
        return {"step": self.step, "best_val": self.best_val, "bad_evals": self.bad_evals,
                "stopped_early": self.stopped_early, "loss_sum": float(self.loss_sum), "loss_n": self.loss_n,
                "history": self.history}

    @classmethod
    def from_state(cls, state: dict) -> "Progress":
        return cls(state["step"], state["best_val"], state["bad_evals"], state.get("stopped_early", False),
                   state.get("loss_sum", 0.0), state.get("loss_n", 0), state["history"])


class Batches:
    """Training batches from one seeded stream, drawn one ahead: the next batch is in hand (on a GPU its copy
    already under way, pinned and non-blocking) while the current one trains. state() is the stream's state
    before the batch in hand was drawn, so a checkpoint that records it resumes at exactly that batch."""

    def __init__(self, data: np.ndarray, block_size: int, batch_size: int):
        self.data, self.block_size, self.batch_size = data, block_size, batch_size
        self.device, self.gen = "cpu", torch.Generator()
        self._state: torch.Tensor | None = None
        self._next: tuple[torch.Tensor, torch.Tensor] | None = None

    def start(self, device: str, seed: int) -> None:
        """The stream seeded with `seed`, batches on `device`; the first batch drawn."""
        self.device = device
        self.gen.manual_seed(seed)
        self.restart(self.gen.get_state())

    def restart(self, state: torch.Tensor) -> None:
        """The stream from `state` (what state() returned when a checkpoint was written); its batch drawn."""
        self.gen.set_state(state)
        self._state = state.clone()
        self._next = get_batch(self.data, self.block_size, self.batch_size, self.gen, self.device)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._next
        self._state = self.gen.get_state()
        self._next = get_batch(self.data, self.block_size, self.batch_size, self.gen, self.device)
        return batch

    def state(self) -> torch.Tensor:
        return self._state


@dataclass
class Loop:
    """Everything one training run holds while it steps (nanoGPT keeps these as module globals)."""
    cfg: TrainConfig
    model: torch.nn.Module        # the weights: checkpoints and evaluations read these
    step_model: torch.nn.Module   # what a step calls: the model, DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 autocast on CUDA only
    autocast: object              # a context manager: bf16/fp16 autocast on CUDA, else nullcontext
    device: str
    group: ddp.Rank | None        # None in a single process
    batches: Batches
    val_data: np.ndarray
    ckpts: Checkpoints
    identity: Identity | None     # the run's identity, recorded in every checkpoint
    hooks: Hooks
    threads: ThreadPicker | None  # train.threads = 0: threads re-picked from the load (lmforge.training.threads)
    run: Progress = field(default_factory=Progress)
    tokens: int = 0               # trained in this process (tokens/s)
    t0: float = 0.0

    @property
    def key(self) -> dict | None:
        return self.identity.key() if self.identity else None

    @property
    def rank0(self) -> bool:
        return self.group is None or self.group.rank == 0

    @property
    def tokens_per_step(self) -> int:
        world = self.group.world_size if self.group else 1
        return self.cfg.grad_accum * self.cfg.batch_size * self.batches.block_size * world

    def tokens_per_s(self) -> float:
        return self.tokens / max(time.perf_counter() - self.t0, 1e-9)


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


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: str) -> torch.optim.Optimizer:
    if cfg.optimizer == "muon":  # Muon on the blocks' matrices, AdamW on the rest (lmforge.training.muon)
        return muon.make(model, lr=cfg.lr, muon_lr=cfg.muon_lr, weight_decay=cfg.weight_decay, beta2=cfg.beta2)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel over all parameters (CUDA, and the CPU since torch 2.4): fewer passes over memory
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=device in ("cuda", "cpu"))


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


def seed_everything(cfg: TrainConfig, rank: int) -> ThreadPicker | None:
    """Threads (train.threads, or picked from the cores others leave free: lmforge.training.threads), the
    deterministic switch and the seed; returns the picker that keeps re-picking threads, if any."""
    picker = None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    else:
        picker = ThreadPicker(adjust=not cfg.deterministic)  # deterministic: one pick, kept
        picker.start()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed + rank)
    return picker


def train(model: torch.nn.Module, train_data: np.ndarray, val_data: np.ndarray, block_size: int,
          cfg: TrainConfig, ckpt_dir: Path, *, hooks: Hooks | None = None, resume: bool = True,
          identity: Identity | None = None, start: StartFrom | None = None) -> TrainResult:
    """Train `model` on token arrays; checkpoints go to ckpt_dir/{last,best}. Returns with the best-val weights
    loaded. `identity` (the run's weights hash and data fingerprint) is recorded in every checkpoint; only a
    checkpoint with the same identity is resumed. `start`: the weights a run without a checkpoint of its own
    starts from (a warm start, or the finished run a --continue extends; lmforge.training.warmstart). Under
    torchrun (more than one process) each rank draws its own batches, gradients are averaged, rank 0 alone
    evaluates, logs and writes checkpoints."""
    check_fits(train_data, val_data, block_size)
    loop = setup(model, cfg, Batches(train_data, block_size, cfg.batch_size), val_data, Checkpoints(ckpt_dir),
                 hooks=hooks or Hooks(), identity=identity)
    start_or_resume(loop, resume, start)
    resumed_from, run = loop.run.step, loop.run
    model.train()
    loop.t0 = time.perf_counter()
    while run.step < cfg.max_steps and not run.stopped_early:
        lr = lr_at(run.step, cfg)
        loss = train_step(loop, lr)  # a tensor on the device: no sync here
        run.step += 1
        run.loss_sum, run.loss_n = run.loss_sum + loss, run.loss_n + 1
        loop.tokens += loop.tokens_per_step
        if loop.threads:
            loop.threads.update()  # a clock read; every few seconds a look at the load
        if loop.hooks.progress and loop.rank0 and (run.step % cfg.log_interval == 0 or run.step == cfg.max_steps):
            loop.hooks.progress(run.step, cfg.max_steps, loss.item(), loop.tokens_per_s())  # the one .item()
        at_eval = run.step % cfg.eval_interval == 0 or run.step == cfg.max_steps
        stop = stop_requested(loop.group, at_eval)
        if at_eval:
            evaluate_and_checkpoint(loop, lr)
        elif stop:  # a checkpoint at the step reached (at an eval step the evaluation has just written it)
            save_last(loop)
        if stop:
            if loop.group:
                ddp.teardown()
            raise interrupt.Interrupted(run.step)
    return finish(loop, resumed_from)


def setup(model: torch.nn.Module, cfg: TrainConfig, batches: Batches, val_data: np.ndarray, ckpts: Checkpoints, *,
          hooks: Hooks, identity: Identity | None) -> Loop:
    """Device, process group, seeds, optimizer and autocast around `model`: the Loop at step 0."""
    device = pick_device(cfg.device)
    group = ddp.setup(device)
    rank = group.rank if group else 0
    picker = seed_everything(cfg, rank)
    model.to(device)
    batches.start(device, cfg.seed + rank)  # each rank its own stream of batches
    optimizer = make_optimizer(model, cfg, device)
    autocast, scaler = autocast_for(device, cfg.dtype)
    wrapped = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[group.local_rank] if device == "cuda" else None) if group else model
    step_model = torch.compile(wrapped) if cfg.compile else wrapped
    return Loop(cfg, model, step_model, optimizer, scaler, autocast, device, group, batches, val_data, ckpts,
                identity, hooks, picker)


def start_or_resume(loop: Loop, resume: bool, start: StartFrom | None) -> None:
    """Rank 0 decides where training starts (and may set a foreign checkpoint aside); the other ranks follow.
    A resumed run restores ckpt/last: weights, optimizer, scaler, RNG streams and bookkeeping. A run without a
    checkpoint of its own continues the finished run `start` (its checkpoints copied here, then restored) or
    warm-starts from its weights at step 0."""
    step, notes = 0, []
    if loop.rank0:
        step, note = (resume_point(loop.ckpts, loop.identity, loop.cfg.max_steps) if resume
                      else (0, "training from step 0"))
        if step == 0 and start is not None and start.kind == "continue":
            loop.ckpts.adopt(start.ckpt_dir, {"identity": loop.key, "stopped_early": False, "bad_evals": 0})
            step, note = start.step, continue_note(start, loop.cfg.max_steps)
        notes.append(note)
    if loop.group:
        step = ddp.broadcast(step)
    if step:
        restore(loop)
    elif start is not None and start.kind == "warm-start":
        notes.append(load_warm_start(loop.model, loop.optimizer, start))  # every rank: the same weights
    for note in notes if loop.hooks.note else []:
        loop.hooks.note(note)


def finish(loop: Loop, resumed_from: int) -> TrainResult:
    """The best weights loaded, the process group left, the run summed up."""
    wall = time.perf_counter() - loop.t0
    if loop.ckpts.path("best") is not None:
        loop.ckpts.load_model("best", loop.model)
    loop.model.eval()
    if loop.group:
        ddp.teardown()
    run = loop.run
    final_train = run.history[-1]["train_loss"] if run.history else float("nan")
    return TrainResult(steps=run.step, best_val_loss=run.best_val, final_train_loss=final_train,
                       history=run.history, tokens_per_s=loop.tokens / max(wall, 1e-9), wall_s=wall,
                       device=loop.device, resumed_from=resumed_from, stopped_early=run.stopped_early)


def trained_record(result: TrainResult, run, n_params: int, lineage=None):
    """What the training step hands on (lmforge.core.records.Trained) for a run directory
    (lmforge.core.layout.RunDir); `lineage`: where its weights started (lmforge.training.warmstart.lineage_of)."""
    from lmforge.training.checkpoint import weights_sha256
    from lmforge.core.records import Lineage, Trained

    return Trained(run_dir=run.root, ckpt_dir=run.ckpt, steps=result.steps, best_val_loss=result.best_val_loss,
                   final_train_loss=result.final_train_loss, tokens_per_s=result.tokens_per_s, wall_s=result.wall_s,
                   device=result.device, resumed_from=result.resumed_from, stopped_early=result.stopped_early,
                   n_params=n_params, weights_sha256=weights_sha256(run.ckpt), history=result.history,
                   lineage=lineage or Lineage())


def stop_requested(group, at_eval: bool) -> bool:
    """Whether to stop after this step. One process: at any step. Under DDP every rank must stop at the same
    step, so rank 0's answer is broadcast, at evaluation steps only (a broadcast per step would cost time)."""
    if group is None:
        return interrupt.requested()
    return bool(ddp.broadcast(interrupt.requested())) if at_eval else False


def train_step(loop: Loop, lr: float) -> torch.Tensor:
    """One optimizer step at learning rate `lr` over cfg.grad_accum micro-batches; returns the mean micro-batch
    loss as a float64 tensor on the device (reading it is a sync: the caller does so only when it logs)."""
    cfg, optimizer, scaler = loop.cfg, loop.optimizer, loop.scaler
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)  # a Muon group's peak is train.muon_lr
    total = torch.zeros((), dtype=torch.float64, device=loop.device)
    for micro in range(cfg.grad_accum):
        x, y = loop.batches.next()  # the batch after it is drawn now, while this one computes
        last = micro == cfg.grad_accum - 1
        with no_sync(loop) if loop.group and not last else nullcontext():  # DDP: one all-reduce per step
            with loop.autocast:
                logits, _ = loop.step_model(x)
                loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                                         y.reshape(-1))
            scaled = loss / cfg.grad_accum
            (scaler.scale(scaled) if scaler else scaled).backward()
        total += loss.detach()
    if scaler:
        scaler.unscale_(optimizer)
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(loop.model.parameters(), cfg.grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / cfg.grad_accum


def no_sync(loop: Loop):
    """DDP's no_sync (gradients kept local on all but the last micro-batch), under torch.compile's wrapper too."""
    return getattr(loop.step_model, "_orig_mod", loop.step_model).no_sync()


def evaluate_and_checkpoint(loop: Loop, lr: float) -> None:
    """Rank 0 evaluates, keeps the best weights and writes ckpt/last; the other ranks take its bookkeeping."""
    run, cfg = loop.run, loop.cfg
    train_loss = float(run.loss_sum) / max(run.loss_n, 1)  # the sync of this evaluation interval
    run.loss_sum, run.loss_n = 0.0, 0
    if loop.rank0:
        val = evaluate_tokens(loop.model, loop.val_data, loop.batches.block_size, cfg.batch_size,
                              cfg.eval_iters * cfg.batch_size, device=loop.device, autocast=loop.autocast)
        row = {"step": run.step, "train_loss": train_loss, "val_loss": val["loss"], "lr": lr,
               "tokens_per_s": loop.tokens_per_s(), "threads": torch.get_num_threads()}
        run.history.append(row)
        if val["loss"] < run.best_val:
            run.best_val, run.bad_evals = val["loss"], 0
            loop.ckpts.save("best", loop.model, None, {"step": run.step, "val_loss": val["loss"],
                                                       "identity": loop.key})
        else:
            run.bad_evals += 1
        run.stopped_early = bool(cfg.early_stop_patience) and run.bad_evals >= cfg.early_stop_patience
    save_last(loop)
    if loop.rank0:
        if loop.hooks.log_eval:
            loop.hooks.log_eval(row, run.step)
        if loop.hooks.sample:
            loop.hooks.sample(loop.model, run.step)
    if loop.group:  # the other ranks wait here for rank 0's checkpoint, then take its bookkeeping
        state = ddp.broadcast(run.to_state())
        run.best_val, run.bad_evals, run.stopped_early, run.history = (
            state["best_val"], state["bad_evals"], state["stopped_early"], state["history"])


def save_last(loop: Loop) -> None:
    """ckpt/last at the current step, with every rank's data stream (all ranks call this; rank 0 writes)."""
    data_rng = torch.stack(ddp.gather(loop.batches.state())) if loop.group else loop.batches.state()
    if loop.rank0:
        family = loop.identity.family if loop.identity else ""
        loop.ckpts.save("last", loop.model, loop.optimizer, {**loop.run.to_state(), "identity": loop.key,
                                                             "family": family, "max_steps": loop.cfg.max_steps,
                                                             "data_rng": data_rng}, loop.scaler)


def restore(loop: Loop) -> None:
    """ckpt/last into the loop: weights, optimizer, scaler, RNG streams, this rank's batch stream, bookkeeping."""
    state, data_rng = loop.ckpts.load_training("last", loop.model, loop.optimizer, loop.scaler)
    if data_rng.dim() == 1:  # written by a single process
        data_rng = data_rng[None]
    rank = loop.group.rank if loop.group else 0
    if rank < len(data_rng):  # a rank beyond the saving job's world size keeps its fresh seed + rank stream
        loop.batches.restart(data_rng[rank])
    loop.run = Progress.from_state(state)
