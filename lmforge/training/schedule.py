"""The learning-rate schedule: linear warmup, then cosine decay to min_lr at max_steps (nanoGPT's get_lr), and
the words a run's lineage records about the schedule its steps used."""
from __future__ import annotations

import math

from lmforge.core.config import TrainConfig
from lmforge.core.records import StartFrom


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def describe(cfg: TrainConfig, start: StartFrom | None) -> str:
    """The learning-rate schedule a run's steps used, in words (lmforge.training.train.lr_at)."""
    own = (f"linear warmup over {cfg.warmup_steps} steps to {cfg.lr:g}, cosine to {cfg.min_lr:g} at step "
           f"{cfg.max_steps}")
    if start is None or start.kind != "continue":
        return own + (" (this run's own, from step 0; the weights from the parent)" if start else "")
    return (f"steps 0-{start.step}: the continued run's (cosine to {cfg.min_lr:g} at step {start.step}); steps "
            f"{start.step}-{cfg.max_steps}: cosine over {cfg.max_steps} steps taken up at step {start.step} (lr "
            f"{lr_at(start.step, cfg):.3g} -> {cfg.min_lr:g})")
