"""`lmforge serve NAME ... | --all`: prefect.yaml's deployments run by this process with Prefect's `serve`, no work
pool or worker: the one-machine way to run the nightly schedules.

Each served deployment keeps prefect.yaml's name, parameters (promote.auto on), tags, concurrency limit, cron and
timezone, read from the file; its schedules are turned on, since serving a deployment is the decision to run it.
Flow runs start as subprocesses of this one, at most `limit` at a time (default 1: one machine trains one model at
a time). A deployment of the same name that `prefect deploy` put on a work pool is refused: Prefect would keep its
pool, and a worker there would take its runs too. Ctrl-C (or SIGTERM) stops serving; Prefect then pauses the served
deployments, so nothing piles up Late while no one serves them, and serving again resumes them. Prefect is imported
lazily."""
from __future__ import annotations

import importlib

from lmforge.ops.deployments import Deployment, entrypoint_module
from lmforge.core.errors import LmforgeError


def refuse_pool_deployments(deployments: list[Deployment]) -> None:
    """One runner per deployment: stop before serving one that a work pool's workers also take runs of."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for d in deployments:
            try:
                pool = client.read_deployment_by_name(d.full_name).work_pool_name
            except ObjectNotFound:
                continue
            if pool:
                raise LmforgeError(f"deployment {d.full_name} is on work pool {pool} (`prefect deploy`): its workers "
                                   "would take the served runs too", hint=f"prefect deployment delete "
                                   f"'{d.full_name}', then serve it (`prefect deploy --name {d.name}` puts it back)")


def runner_deployments(deployments: list[Deployment]) -> list:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    out = []
    for d in deployments:
        module, func = entrypoint_module(d.entrypoint)
        flow = getattr(importlib.import_module(module), func)
        concurrency = None
        if d.concurrency_limit is not None:
            concurrency = ConcurrencyLimitConfig(limit=d.concurrency_limit, collision_strategy=ConcurrencyLimitStrategy(
                d.collision_strategy or "ENQUEUE"))
        # MODULE_PATH: the served process imports the flow by module (lmforge is installed), from any directory
        out.append(flow.to_deployment(name=d.name, schedules=[Cron(s.cron, timezone=s.timezone) for s in d.schedules],
                                      parameters=d.parameters, tags=list(d.tags), description=d.description,
                                      concurrency_limit=concurrency, entrypoint_type=EntrypointType.MODULE_PATH))
    return out


def serve(deployments: list[Deployment], limit: int = 1) -> None:
    """Serve until Ctrl-C / SIGTERM (Prefect's serve catches both and pauses the deployments on the way out)."""
    from prefect import serve as prefect_serve

    refuse_pool_deployments(deployments)
    prefect_serve(*runner_deployments(deployments), limit=limit)
