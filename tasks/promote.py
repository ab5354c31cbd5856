"""Promotion tasks: compare a version with the champion, or roll the champion back (lmforge.promote), and
publish the decision as a Prefect markdown artifact."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from lmforge.promote import comparison_markdown, promote, rollback


@task(name="promote")
def promote_candidate(name: str, margin: float = 0.01, force: bool = False, version: str | None = None,
                      gate: float = 0.75, by: str | None = None, windows: int = 128) -> dict:
    result = promote(name, margin=margin, force=force, version=version, gate=gate, by=by, max_windows=windows)
    get_run_logger().info("%s v%s: %s (%s)", name, result["candidate_version"], result["decision"], result["reason"])
    if result["decision"] != "unchanged":
        create_markdown_artifact(comparison_markdown(result), key=f"promotion-{artifact_key(name)}",
                                 description=f"{name}: candidate vs champion")
    return result


@task(name="rollback")
def rollback_champion(name: str, by: str | None = None) -> dict:
    result = rollback(name, by=by)
    get_run_logger().info("%s: champion v%s -> v%s (rolled back by %s)", name, result["replaced_version"],
                          result["champion_version"], result["by"])
    return result


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())
