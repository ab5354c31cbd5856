"""`lmforge schedule setup | on | off`: put prefect.yaml's deployments into operation on the Prefect server
PREFECT_API_URL names.

- setup creates what prefect.yaml cannot hold: a global concurrency limit per GPU pool (named after the pool,
  limit 1, left alone when it exists: its limit is the pool's GPU count, which only its owner knows; tasks/slots.py
  takes it around training), the Webhook block `lmforge-alerts` (from $LMFORGE_ALERT_WEBHOOK, or one that exists),
  and the alert automations of automations.yaml (runs stuck Late or Pending, runs Failed or Crashed, promotion
  decisions; each replacing the automation of the same name). Everything is
  read and validated before anything is written.
- on / off switch a deployment's schedules, by deployment name (Prefect's CLI wants each schedule's id).
Prefect is imported lazily, as in lmforge/ops/orchestration.py."""
from __future__ import annotations

import copy
import os
import urllib.parse
import uuid
from pathlib import Path

from lmforge.core.config import REPO_ROOT
from lmforge.ops.deployments import Deployment, gpu_pools
from lmforge.core.errors import LmforgeError

ALERT_BLOCK = "lmforge-alerts"
WEBHOOK_ENV = "LMFORGE_ALERT_WEBHOOK"
BLOCK_REF = "webhook/"  # automations.yaml names its block as webhook/NAME; setup puts in the block's id


def default_automations_path() -> Path:
    return REPO_ROOT / "automations.yaml"


def load_automations(path: Path, stuck_after: int | None = None) -> list[dict]:
    """automations.yaml's automations as dicts, `within` set to `stuck_after` seconds when given, each validated by
    Prefect's own model (with a stand-in block id)."""
    import yaml
    from pydantic import ValidationError

    from prefect.events.schemas.automations import AutomationCore

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise LmforgeError(f"no automations file at {path}", hint="run from the repository root, or --automations "
                           "PATH") from None
    except yaml.YAMLError as exc:
        raise LmforgeError(f"{path} is not valid YAML: {exc}", hint="fix the file's syntax") from None
    specs = raw.get("automations", []) if isinstance(raw, dict) else []
    if stuck_after is not None and stuck_after < 10:
        raise LmforgeError(f"--stuck-after {stuck_after}: Prefect's proactive triggers need at least 10 seconds",
                           hint="--stuck-after 900 (15 minutes)")
    for spec in specs:
        if stuck_after is not None and spec["trigger"].get("posture") == "Proactive":  # the stuck-run alerts
            spec["trigger"]["within"] = stuck_after
        try:
            AutomationCore.model_validate(_with_block_id(spec, uuid.uuid4()))
        except ValidationError as exc:
            raise LmforgeError(f"automation {spec.get('name')!r} in {path} is not valid: "
                               f"{exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}",
                               hint="the format is `prefect automation create --from-file`'s") from None
    return specs


def _with_block_id(spec: dict, block_id) -> dict:
    spec = copy.deepcopy(spec)
    for action in spec.get("actions", []):
        if str(action.get("block_document_id", "")).startswith(BLOCK_REF):
            action["block_document_id"] = str(block_id)
    return spec


def _blocks_named(specs: list[dict]) -> set[str]:
    return {str(a["block_document_id"])[len(BLOCK_REF):] for s in specs for a in s.get("actions", [])
            if str(a.get("block_document_id", "")).startswith(BLOCK_REF)}


def _check_webhook_url(url: str) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise LmforgeError(f"{WEBHOOK_ENV} must be an http(s) URL, got {url!r}",
                           hint=f"export {WEBHOOK_ENV}=https://hooks.slack.com/services/...")


def _block_id(client, name: str):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_block_document_by_name(name, block_type_slug="webhook", include_secrets=False).id
    except ObjectNotFound:
        return None


def setup(deployments: list[Deployment], automations: list[dict], webhook_url: str | None) -> list[str]:
    """Create the GPU pools' limits, the alert webhook block and the automations; returns one line per thing done."""
    from prefect import get_client
    from prefect.blocks.webhook import Webhook
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.events.schemas.automations import AutomationCore
    from prefect.exceptions import ObjectNotFound

    blocks = _blocks_named(automations)
    if webhook_url:
        _check_webhook_url(webhook_url)
    done = []
    with get_client(sync_client=True) as client:
        missing = [b for b in blocks if not (webhook_url and b == ALERT_BLOCK) and _block_id(client, b) is None]
        if missing:
            raise LmforgeError(f"no Webhook block named {missing[0]!r} for the late-run alerts, and {WEBHOOK_ENV} "
                               "is not set", hint=f"export {WEBHOOK_ENV}=https://your.hook/url and run "
                               "`lmforge schedule setup` again")
        for pool in gpu_pools(deployments):
            try:
                limit = client.read_global_concurrency_limit_by_name(pool)
                done.append(f"global concurrency limit {pool}: exists, limit {limit.limit} (left as it is)")
            except ObjectNotFound:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=pool, limit=1))
                done.append(f"global concurrency limit {pool}: created, limit 1 (one training per GPU: "
                            f"`prefect gcl update {pool} --limit N` for N GPUs)")
        if webhook_url and ALERT_BLOCK in blocks:
            Webhook(url=webhook_url, headers={"Content-Type": "application/json"}).save(ALERT_BLOCK, overwrite=True)
            done.append(f"webhook block {ALERT_BLOCK}: saved from {WEBHOOK_ENV}")
        for spec in automations:
            ids = {b: _block_id(client, b) for b in _blocks_named([spec])}
            resolved = copy.deepcopy(spec)
            for action in resolved.get("actions", []):
                ref = str(action.get("block_document_id", ""))
                if ref.startswith(BLOCK_REF):
                    action["block_document_id"] = str(ids[ref[len(BLOCK_REF):]])
            for old in client.read_automations_by_name(spec["name"]):
                client.delete_automation(old.id)
            client.create_automation(AutomationCore.model_validate(resolved))
            trigger = spec["trigger"]
            when = (f"fires after {trigger['within']} s" if trigger.get("posture") == "Proactive" else
                    f"fires on each {' or '.join(trigger['expect'])} event")
            done.append(f"automation {spec['name']!r}: created ({when})")
    return done


def webhook_from_env() -> str | None:
    return os.environ.get(WEBHOOK_ENV) or None


def set_active(deployment: Deployment, active: bool) -> list[str]:
    """Turn the deployment's schedules on or off; returns one line per schedule."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(deployment.full_name)
        except ObjectNotFound:
            raise LmforgeError(f"deployment {deployment.full_name} is not on the server",
                               hint="prefect deploy --all (from the repository root)") from None
        if not found.schedules:
            raise LmforgeError(f"deployment {deployment.full_name} has no schedule", hint="prefect deploy --all")
        if found.paused and active:  # a paused deployment schedules nothing, whatever its schedules say
            client.resume_deployment(found.id)
        lines = []
        for s in found.schedules:
            client.update_deployment_schedule(found.id, s.id, active=active)
            what = getattr(s.schedule, "cron", None) or str(s.schedule)
            tz = getattr(s.schedule, "timezone", None)
            lines.append(f"{deployment.full_name}: schedule {what}{f' {tz}' if tz else ''} "
                         f"{'on' if active else 'off'}")
    return lines
