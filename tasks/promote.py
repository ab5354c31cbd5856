"""Promotion tasks: compare a version with the champion (on request, or as the pipeline's last step), or roll the
champion back (lmforge.registry.promote); publish the decision as a Prefect markdown artifact and alert on it
(lmforge.ops.alerts: a Prefect event the alert automation sends to the webhook)."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import deployment, flow_run

from lmforge.core.config import Config
from lmforge.core.records import Registered
from lmforge.ops.alerts import alert_decision
from lmforge.registry.promote import Refused, comparison_markdown, promote, promote_after_run, rollback


@task(name="promote")
def promote_candidate(name: str, *, margin: float | None = None, force: bool = False, version: str | None = None,
                      gate: float | None = None, by: str | None = None, preset: str | None = None) -> dict:
    """`lmforge promote`: margin and gate None read the candidate's (or `preset`'s) [promote] section. A refused
    comparison alerts as `refused` and fails the run with its reason."""
    try:
        result = promote(name, margin=margin, force=force, version=version, gate=gate, by=by, preset=preset)
    except Refused as refused:
        alert_decision({"model": name, "candidate_version": version or "candidate", "decision": "refused",
                        "reason": str(refused), "by": by, "forced": force})
        raise
    _publish(name, result)
    return result


@task(name="promote-after-run")
def promote_registered(cfg: Config, registered: Registered) -> dict:
    """promote.auto: the version this run registered against the champion, with the config's [promote] section;
    a run that registered nothing new decides nothing; a refused comparison is recorded, never a failed run."""
    result = promote_after_run(cfg.name, registered, by=_decided_by())
    _publish(cfg.name, result)
    return result


def _publish(name: str, result: dict) -> None:
    get_run_logger().info("%s v%s: %s (%s)", name, result["candidate_version"], result["decision"], result["reason"])
    if result["decision"] != "unchanged":
        create_markdown_artifact(comparison_markdown(result), key=f"promotion-{artifact_key(name)}",
                                 description=f"{name}: candidate vs champion")
    alert_decision(result)


def _decided_by() -> str:
    """Who decided, as recorded on the version: the deployment and flow run that promoted."""
    name = deployment.name
    return f"{flow_run.flow_name}/{name} (flow run {flow_run.name})" if name else f"flow run {flow_run.name}"


@task(name="rollback")
def rollback_champion(name: str, by: str | None = None) -> dict:
    result = rollback(name, by=by)
    get_run_logger().info("%s: champion v%s -> v%s (rolled back by %s)", name, result["replaced_version"],
                          result["champion_version"], result["by"])
    alert_decision(result)
    return result


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())
