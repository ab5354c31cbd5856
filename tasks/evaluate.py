"""Evaluation task: the best checkpoint's val loss, perplexity, accuracy and bits per character over the whole
val split, plus the loss-curve plot, logged to MLflow."""
from __future__ import annotations

from prefect import get_run_logger, task

from lmforge.registry import tracking
from lmforge.core.config import Config
from lmforge.training.evaluate import evaluate_best, plot_losses
from lmforge.core.records import PreparedData, Trained


@task(name="evaluate")
def evaluate_model(cfg: Config, data: PreparedData, trained: Trained, run_id: str | None = None) -> dict:
    metrics = evaluate_best(cfg, data, trained.ckpt_dir)
    get_run_logger().info("val loss %.4f  perplexity %.2f  accuracy %.3f", metrics["val_loss"],
                          metrics["val_perplexity"], metrics["val_accuracy"])
    if run_id:
        # at the last training step, so MLflow's latest val_loss is this full-split figure, not a training estimate
        tracking.log_metrics(run_id, metrics, trained.steps)
        if trained.history:
            tracking.log_artifact(run_id, plot_losses(trained.history, trained.run_dir / "loss.png"), "plots")
    return metrics
