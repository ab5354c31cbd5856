"""Evaluation task: the best checkpoint's val loss, perplexity, accuracy and bits per character over the whole
val split, plus the loss-curve plot, logged to MLflow."""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from lmforge import tracking
from lmforge.checkpoint import load_best
from lmforge.config import Config
from lmforge.data.shards import open_shard
from lmforge.evaluate import evaluate_tokens, plot_losses, split_metrics


@task(name="evaluate")
def evaluate_model(cfg: Config, data: dict, trained: dict, run_id: str | None = None) -> dict:
    model = load_best(cfg.model, data["vocab_size"], Path(trained["ckpt_dir"]))
    res = evaluate_tokens(model, open_shard(Path(data["dir"]), "val"), cfg.model.block_size, cfg.train.batch_size,
                          max_windows=2000)
    metrics = split_metrics(res, cfg.tokenizer.kind, data["val"]["tokens"], data.get("val_chars", 0))
    get_run_logger().info("val loss %.4f  perplexity %.2f  accuracy %.3f", res["loss"], res["perplexity"],
                          res["accuracy"])
    if run_id:
        # at the last training step, so MLflow's latest val_loss is this full-split figure, not a training estimate
        tracking.log_metrics(run_id, metrics, trained["steps"])
        if trained["history"]:
            plot = plot_losses(trained["history"], Path(trained["run_dir"]) / "loss.png")
            tracking.log_artifact(run_id, plot, "plots")
    return metrics
