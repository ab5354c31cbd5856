"""Training task: build the model for the prepared vocabulary and run the training loop, logging each
evaluation to MLflow. Returns the checkpoint directory and the run's training figures."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import get_run_logger, task

from lmforge import tracking
from lmforge.config import Config
from lmforge.data.shards import open_shard
from lmforge.models import build_model
from lmforge.train import train


@task(name="train")
def train_model(cfg: Config, meta: dict, ckpt_dir: Path, run_id: str | None = None) -> dict:
    logger = get_run_logger()
    model = build_model(cfg.model, meta["vocab_size"])
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("%s model, %.2fM parameters", cfg.model.family, n_params / 1e6)

    def log(row: dict, step: int) -> None:
        logger.info("step %(step)d  train %(train_loss).4f  val %(val_loss).4f  %(tokens_per_s).0f tok/s", row)
        if run_id:
            tracking.log_metrics(run_id, {k: v for k, v in row.items() if k != "step"}, step)

    data_dir = Path(meta["dir"])
    result = train(model, open_shard(data_dir, "train"), open_shard(data_dir, "val"), cfg.model.block_size,
                   cfg.train, ckpt_dir, log)
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "history"}
    if run_id:
        tracking.log_metrics(run_id, {"best_val_loss": result.best_val_loss, "train_tokens_per_s": result.tokens_per_s,
                                      "train_wall_s": result.wall_s, "n_params": n_params})
    return {**summary, "history": result.history, "ckpt_dir": str(ckpt_dir), "n_params": n_params}
