"""Thin Prefect tasks over lmforge/: names, retries, logging. No ML logic lives here."""
from lmforge.core.errors import LmforgeError
from lmforge.core.interrupt import Interrupted
from lmforge.core.policy import SETTINGS, Policy, load as load_policy


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient failures; a user's mistake (LmforgeError) or an interrupt (Ctrl-C) fails at once."""
    return not isinstance(state.data, (LmforgeError, Interrupted))


def run_policy() -> Policy:
    """The operator's policy for this flow run (lmforge/core/policy.py): a run Prefect started for a deployment
    (its flow run names a deployment: a worker ran it) gets the deployment defaults. The per-run job variables of a
    deployment run come from whoever triggered it, so one that sets a policy variable is refused: the policy is
    the worker's environment, not the triggerer's."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    flow_run = ctx.flow_run if ctx is not None else None
    deployment = bool(flow_run is not None and flow_run.deployment_id)
    if deployment:
        env = (flow_run.job_variables or {}).get("env") or {}
        named = sorted(k for k in env if k in SETTINGS)
        if named:
            raise LmforgeError(f"this deployment run's job_variables set {named[0]}, the operator's setting",
                               hint="set the policy in the worker's environment (docs/security.md), not per run")
    return load_policy(deployment=deployment)


def parsed_config(preset: str, overrides: dict | None, config, policy: Policy):
    """The flow's Config: the one the CLI parsed (`config`), or preset + overrides parsed here within the policy.
    A deployment run parses its own: a Config handed in as a parameter came from whoever triggered the run and
    skipped the operator's policy."""
    from lmforge.core.config import load_config

    if config is not None and policy.deployment:
        raise LmforgeError("a deployment run takes `preset` and `overrides`, not a parsed `config`",
                           hint="pass --params '{\"preset\": ..., \"overrides\": {...}}'")
    return config if config is not None else load_config(preset, overrides, policy)
