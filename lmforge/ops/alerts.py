"""Promotion decisions as Prefect events, which the automation "lmforge: promotion decision" (automations.yaml,
created by `lmforge schedule setup`) turns into a POST to the Webhook block `lmforge-alerts`: the receiver of
the Late/Pending and the Failed/Crashed alerts. Each decision (promoted, kept, refused, rolled back) is one event
`lmforge.promotion.<decision>` about the resource `lmforge.model.<name>`, its payload the alert: `text` (what
Slack shows), the decision, the reason, the versions and the scores. A decision that changes nothing (a
scheduled run that registered nothing new, a version that already is champion) sends none.

Why events, not MLflow's registry webhooks: an MLflow webhook fires on the alias change alone (no reason, no
scores, nothing for a kept or refused decision), needs a tracking server (not the SQLite file `lmforge run` uses
by default) and its own receiver format; the event reaches the same block and payload shape as every other lmforge
alert, and a server without the automation (Prefect's temporary one) just stores it."""
from __future__ import annotations

ALERTED = {"promoted", "kept", "refused", "rolled back"}
SCORES = ("candidate_bpb", "champion_bpb", "unigram_bpb", "candidate_loss", "champion_loss")


def decision_event(result: dict) -> dict | None:
    """The event for a promotion result (lmforge.registry.promote), or None when it decided nothing."""
    decision = result.get("decision")
    if decision not in ALERTED:
        return None
    name = result["model"]
    champion = result["candidate_version"] if decision in ("promoted", "rolled back") else result.get(
        "champion_version")
    scores = {k: round(result[k], 4) for k in SCORES if isinstance(result.get(k), (int, float))}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    text = (f"lmforge: {name} v{result['candidate_version']} {decision}: {result.get('reason', '')}"
            + (f" ({shown})" if shown else "") + f"; champion {f'v{champion}' if champion else 'none'}")
    before = result.get("replaced_version") if decision == "rolled back" else result.get("champion_version")
    payload = {"text": text, "model": name, "decision": decision, "reason": result.get("reason", ""),
               "candidate_version": result.get("candidate_version"), "champion_before": before,
               "champion_after": champion, "scores": scores, "by": result.get("by"), "forced": result.get("forced")}
    return {"event": f"lmforge.promotion.{decision.replace(' ', '-')}",
            "resource": {"prefect.resource.id": f"lmforge.model.{name}", "prefect.resource.name": name},
            "payload": payload}


def alert_decision(result: dict) -> None:
    """Emit the decision's event to the Prefect API this process talks to (nothing for a non-decision)."""
    from prefect.events import emit_event

    event = decision_event(result)
    if event is not None:
        emit_event(**event)
