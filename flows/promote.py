"""`lmforge promote NAME` / `lmforge rollback NAME`: move the registry's `champion` alias on evidence, or back."""
from __future__ import annotations

from prefect import flow

from lmforge.tasks.promote import promote_candidate, rollback_champion


@flow(name="lmforge-promote")
def promote(name: str = "jokes-char", margin: float | None = None, force: bool = False,  # a flow: its parameters
            version: str | None = None, gate: float | None = None, by: str | None = None,
            preset: str | None = None) -> dict:
    """margin / gate None: the [promote] section of the config the candidate was trained with (or of `preset`)."""
    return promote_candidate(name, margin=margin, force=force, version=version, gate=gate, by=by, preset=preset)


@flow(name="lmforge-rollback")
def rollback(name: str = "jokes-char", by: str | None = None) -> dict:
    return rollback_champion(name, by)
