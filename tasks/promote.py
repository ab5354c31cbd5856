"""Promotion tasks: compare a version with the champion (on request, or as the pipeline's last step), or roll the
champion back (lmforge.registry.promote), and publish the decision as a Prefect markdown artifact."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import deployment, flow_run

from lmforge.core.config import Config
from lmforge.registry.promote import comparison_markdown, promote, promote_after_run, rollback


@task(name="promote")
def promote_candidate(name: str, margin: float = 0.01, force: bool = False, version: str | None = None,
                      gate: float = 0.75, by: str | None = None, windows: int = 128) -> dict:
    result = promote(name, margin=margin, force=force, version=version, gate=gate, by=by, max_windows=windows)
    _publish(name, result)
    return result


@task(name="promote-after-run")
def promote_registered(cfg: Config, version: str) -> dict:
    """promote.auto: the version this run registered against the champion, margin, gate and windows from the
    config's [promote] section; a refused comparison is recorded as kept, never a failed run."""
    p = cfg.promote
    result = promote_after_run(cfg.name, version, p.margin, p.gate, p.windows, by=_decided_by())
    _publish(cfg.name, result)
    return result


def _publish(name: str, result: dict) -> None:
    get_run_logger().info("%s v%s: %s (%s)", name, result["candidate_version"], result["decision"], result["reason"])
    if result["decision"] != "unchanged":
        create_markdown_artifact(comparison_markdown(result), key=f"promotion-{artifact_key(name)}",
                                 description=f"{name}: candidate vs champion")


def _decided_by() -> str:
    """Who decided, as recorded on the version: the deployment and flow run that promoted."""
    name = deployment.name
    return f"{flow_run.flow_name}/{name} (flow run {flow_run.name})" if name else f"flow run {flow_run.name}"


@task(name="rollback")
def rollback_champion(name: str, by: str | None = None) -> dict:
    result = rollback(name, by=by)
    get_run_logger().info("%s: champion v%s -> v%s (rolled back by %s)", name, result["replaced_version"],
                          result["champion_version"], result["by"])
    return result


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())
