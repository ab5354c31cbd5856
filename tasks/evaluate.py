"""Evaluation task: the best checkpoint's val loss, perplexity, accuracy and bits per character, plus the
loss-curve plot, logged to MLflow."""
from __future__ import annotations

import math
from pathlib import Path

from prefect import get_run_logger, task

from lmforge import tracking
from lmforge.config import Config
from lmforge.data.shards import open_shard
from lmforge.evaluate import bits_per_char, evaluate_tokens, plot_losses
from lmforge.models import build_model
from lmforge.train import Checkpoints


@task(name="evaluate")
def evaluate_model(cfg: Config, meta: dict, trained: dict, run_id: str | None = None) -> dict:
    model = build_model(cfg.model, meta["vocab_size"])
    Checkpoints(Path(trained["ckpt_dir"])).load_model("best", model)
    val = open_shard(Path(meta["dir"]), "val")
    res = evaluate_tokens(model, val, cfg.model.block_size, cfg.train.batch_size, max_windows=2000)
    metrics = {"val_loss": res["loss"], "val_perplexity": res["perplexity"], "val_accuracy": res["accuracy"]}
    if cfg.tokenizer.kind == "char":
        metrics["val_bpc"] = res["loss"] / math.log(2)
    elif meta.get("val_chars"):
        metrics["val_bpc"] = bits_per_char(res["loss"], meta["val"]["tokens"], meta["val_chars"])
    get_run_logger().info("val loss %.4f  perplexity %.2f  accuracy %.3f", res["loss"], res["perplexity"],
                          res["accuracy"])
    if run_id:
        # at the last training step, so MLflow's latest val_loss is this full-split figure, not a training estimate
        tracking.log_metrics(run_id, metrics, trained["steps"])
        if trained["history"]:
            plot = plot_losses(trained["history"], Path(trained["ckpt_dir"]) / "loss.png")
            tracking.log_artifact(run_id, plot, "plots")
    return metrics
