"""Promotion task: compare candidate with champion (lmforge.promote) and publish the comparison as a Prefect
markdown artifact."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from lmforge.promote import comparison_markdown, promote


@task(name="promote")
def promote_candidate(name: str, margin: float = 0.01, force: bool = False) -> dict:
    result = promote(name, margin=margin, force=force)
    get_run_logger().info("%s v%s: %s (%s)", name, result["candidate_version"], result["decision"], result["reason"])
    if result["decision"] != "unchanged":
        create_markdown_artifact(comparison_markdown(result), key=f"promotion-{artifact_key(name)}",
                                 description=f"{name}: candidate vs champion")
    return result


def artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower())
