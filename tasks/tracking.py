"""Tracking tasks: open the MLflow run (failing fast when the server is down) and register the model."""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from lmforge import tracking
from lmforge.config import Config
from lmforge.redact import redact_text
from tasks.promote import artifact_key


@task(name="start-tracking")
def start_tracking(cfg: Config, run_name: str) -> str:
    uri = tracking.check_tracking_server()
    run_id = tracking.start_run(f"lmforge-{cfg.name}", run_name, cfg.flat(),
                                tags={"preset": cfg.name, "prefect_flow_run_id": str(flow_run.get_id())})
    get_run_logger().info("MLflow run %s at %s", run_id, redact_text(uri))
    return run_id


def mark_mlflow_run_failed(flow, flow_run_, state) -> None:
    """Flow on_failure hook: the MLflow run opened by this flow run ends FAILED instead of staying RUNNING."""
    tracking.fail_runs_tagged("prefect_flow_run_id", str(flow_run_.id))


@task(name="register")
def register_model(cfg: Config, run_id: str, exported: dict, meta: dict, metrics: dict, samples: list[dict]) -> str:
    tags = {"preset": cfg.name, "data_source": meta["source"], "corpus_sha256": meta["corpus_sha256"],
            "git_commit": tracking.git_commit(), "val_loss": f"{metrics['val_loss']:.4f}",
            "onnx_parity_max_abs": f"{exported['onnx_parity_max_abs']:.3e}",
            "onnx_fp32_bytes": exported["onnx_fp32_bytes"], "prepared_dir": meta["dir"],
            **{k: f"{v:+.4f}" for k, v in exported.items() if k.endswith("_val_loss_delta")}}
    if "onnx_int8_bytes" in exported:
        tags["onnx_int8_bytes"] = exported["onnx_int8_bytes"]
    version = tracking.register_model(run_id, Path(exported["model_dir"]), cfg.name, tags,
                                      description=model_card(cfg, metrics, samples))
    tracking.end_run(run_id)
    get_run_logger().info("registered %s version %s (alias candidate)", cfg.name, version)
    return version


@task(name="summary")
def publish_summary(cfg: Config, result: dict) -> None:
    """The flow run's Prefect markdown artifact: metrics, samples, MLflow run and model version."""
    lines = [f"# {cfg.name}: version {result['model_version']}", "",
             f"MLflow run `{result['run_id']}`, model `{result['model_uri']}` (version {result['model_version']})", "",
             "| metric | value |", "| --- | --- |",
             *[f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
               for k, v in result["metrics"].items()],
             "", "## Samples", "", *[f"- `{s[:160]!r}`" for s in result["samples"][:6]]]
    create_markdown_artifact("\n".join(lines), key=f"run-{artifact_key(cfg.name)}",
                             description=f"lmforge run of {cfg.name}")


def model_card(cfg: Config, metrics: dict, samples: list[dict]) -> str:
    m = cfg.model
    lines = [f"# {cfg.name}", "", cfg.description, "",
             f"**Data**: {cfg.data.source} ({cfg.tokenizer.kind} tokenizer)",
             f"**Architecture**: {m.family}, {m.n_layer} layers, {m.n_embd} wide, context {m.block_size}", "",
             "| metric | value |", "| --- | --- |", *[f"| {k} | {v:.4f} |" for k, v in metrics.items()], "",
             "**Samples**", *[f"- T={s['temperature']}: {s['text'][:160]!r}" for s in samples[:6]], "",
             "Intended use: experimentation with small language models; not for production text."]
    return "\n".join(lines)
