"""Tracking tasks: open the MLflow run (failing fast when the server is down) and register the model."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from lmforge.registry import tracking
from lmforge.core.config import Config
from lmforge.core.records import Exported, PreparedData, Registered, Trained
from lmforge.registry.promote import val_text_score
from lmforge.registry.review import lineage_tags, model_card, run_summary, version_tags
from lmforge.tasks import retry_unless_user_error
from lmforge.core.redact import redact_text
from lmforge.tasks.promote import artifact_key


@task(name="start-tracking")
def start_tracking(cfg: Config, run_name: str) -> str:
    uri = tracking.check_tracking_server()
    run_id = tracking.start_run(f"lmforge-{cfg.name}", run_name, cfg.flat(),
                                tags={"model": cfg.name, "preset": cfg.preset,
                                      "prefect_flow_run_id": str(flow_run.get_id())})
    get_run_logger().info("MLflow run %s at %s", run_id, redact_text(uri))
    return run_id


@task(name="end-tracking")
def end_tracking(run_id: str, status: str) -> None:
    """End the MLflow run with `status` (KILLED after an interrupt)."""
    tracking.end_run(run_id, status)


def mark_mlflow_run_failed(flow, flow_run_, state) -> None:
    """Flow on_failure hook: the MLflow run opened by this flow run ends FAILED instead of staying RUNNING."""
    tracking.fail_runs_tagged("prefect_flow_run_id", str(flow_run_.id))


@task(name="register", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_unless_user_error)
def register_model(cfg: Config, run_id: str, exported: Exported, data: PreparedData, trained: Trained, *,
                   metrics: dict, samples: list[dict]) -> Registered:
    """Register the exported model (or re-use an identical version: a retry after a partial failure, or a re-run
    of a finished, unchanged config) and end the MLflow run. The version's score (bits per byte of its val text,
    lmforge.registry.promote.val_text_score) is logged to the run and tagged."""
    scores = val_text_score(exported.model_dir, data.dir, cfg.promote.text_bytes)
    if scores:
        tracking.log_metrics(run_id, {"val_bits_per_byte": scores["bits_per_byte"],
                                      "val_bits_per_char": scores["bits_per_char"]}, trained.steps)
    lineage = lineage_tags(trained)
    tags = {**version_tags(cfg, data, trained, exported, metrics, git_commit=tracking.git_commit(), scores=scores),
            **lineage}
    card = model_card(cfg, data, metrics, samples, run_id=run_id, scores=scores, lineage=lineage)
    version, reused = tracking.register_model(run_id, exported.model_dir, cfg.name, tags, description=card,
                                              val_dir=data.dir, model_description=card.split("\n\n")[1],
                                              example_prompt=cfg.eval.prompts[0] if cfg.eval.prompts else "")
    tracking.end_run(run_id)
    if reused:
        get_run_logger().info("unchanged: %s version %s already holds these weights, trained on this data; "
                              "nothing new registered (alias candidate -> %s)", cfg.name, version, version)
    else:
        get_run_logger().info("registered %s version %s (alias candidate)", cfg.name, version)
    return Registered(cfg.name, version, reused)


@task(name="summary")
def publish_summary(cfg: Config, result: dict) -> None:
    """The flow run's Prefect markdown artifact."""
    create_markdown_artifact(run_summary(cfg.name, result), key=f"run-{artifact_key(cfg.name)}",
                             description=f"lmforge run of {cfg.name}")
