"""`lmforge promote NAME`: move the registry's `champion` alias to `candidate` when it wins on held-out data."""
from __future__ import annotations

from prefect import flow

from tasks.promote import promote_candidate


@flow(name="lmforge-promote")
def promote(name: str = "jokes-char", margin: float = 0.01, force: bool = False) -> dict:
    return promote_candidate(name, margin, force)
