"""The main job: acquire -> clean -> tokenize -> train -> evaluate -> export -> samples -> register."""
from __future__ import annotations

from prefect import flow

from flows.prepare import prepare_data
from lmforge.config import load_config
from lmforge.layout import RunLayout
from tasks.evaluate import evaluate_model
from tasks.export import export_model, sample_model
from tasks.tracking import mark_mlflow_run_failed, publish_summary, register_model, start_tracking
from tasks.train import train_model


@flow(name="lmforge-pipeline", log_prints=True, on_failure=[mark_mlflow_run_failed])
def pipeline(preset: str = "jokes-char", overrides: dict | None = None) -> dict:
    cfg = load_config(preset, overrides)
    where = RunLayout.for_config(cfg)
    run_id = start_tracking(cfg, where.root.name)
    meta = prepare_data(cfg, where, run_id)
    trained = train_model(cfg, meta, where.ckpt, run_id)
    metrics = evaluate_model(cfg, meta, trained, run_id)
    exported = export_model(cfg, meta, trained, metrics, where.model, run_id)
    samples = sample_model(cfg, exported["model_dir"], run_id)
    version = register_model(cfg, run_id, exported, meta, metrics, samples)
    result = {"run_id": run_id, "model_name": cfg.name, "model_version": version,
              "model_uri": f"models:/{cfg.name}@candidate", "model_dir": exported["model_dir"],
              "metrics": {**metrics, "onnx_parity_max_abs": exported["onnx_parity_max_abs"],
                          "best_val_loss": trained["best_val_loss"], "train_tokens_per_s": trained["tokens_per_s"],
                          "train_steps": trained["steps"], "resumed_from": trained["resumed_from"]},
              "samples": [s["text"] for s in samples]}
    publish_summary(cfg, result)
    return result
