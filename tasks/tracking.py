"""Tracking tasks: open the MLflow run (failing fast when the server is down) and register the model."""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from lmforge import tracking
from lmforge.config import Config


@task(name="start-tracking")
def start_tracking(cfg: Config, run_name: str) -> str:
    uri = tracking.check_tracking_server()
    run_id = tracking.start_run(f"lmforge-{cfg.name}", run_name, cfg.flat(), tags={"preset": cfg.name})
    get_run_logger().info("MLflow run %s at %s", run_id, uri)
    return run_id


@task(name="register")
def register_model(cfg: Config, run_id: str, exported: dict, meta: dict, metrics: dict, samples: list[dict]) -> str:
    tags = {"preset": cfg.name, "data_source": meta["source"], "corpus_sha256": meta["corpus_sha256"],
            "git_commit": tracking.git_commit(), "val_loss": f"{metrics['val_loss']:.4f}",
            "onnx_parity_max_abs": f"{exported['onnx_parity_max_abs']:.3e}",
            "onnx_fp32_bytes": exported["onnx_fp32_bytes"]}
    version = tracking.register_model(run_id, Path(exported["model_dir"]), cfg.name, tags,
                                      description=model_card(cfg, metrics, samples))
    tracking.end_run(run_id)
    get_run_logger().info("registered %s version %s (alias candidate)", cfg.name, version)
    return version


def model_card(cfg: Config, metrics: dict, samples: list[dict]) -> str:
    m = cfg.model
    lines = [f"# {cfg.name}", "", cfg.description, "",
             f"**Data**: {cfg.data.source} ({cfg.tokenizer.kind} tokenizer)",
             f"**Architecture**: {m.family}, {m.n_layer} layers, {m.n_embd} wide, context {m.block_size}", "",
             "| metric | value |", "| --- | --- |", *[f"| {k} | {v:.4f} |" for k, v in metrics.items()], "",
             "**Samples**", *[f"- T={s['temperature']}: {s['text'][:160]!r}" for s in samples[:6]], "",
             "Intended use: experimentation with small language models; not for production text."]
    return "\n".join(lines)
