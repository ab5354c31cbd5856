"""GPU training slots. A run on a GPU work pool trains while holding a slot of the Prefect global concurrency limit
named after that pool (`lmforge schedule setup` creates it with limit 1; raise it to the pool's GPU count), so runs
of two different deployments never train on one GPU at once; prefect.yaml's deployment limits only keep each
deployment to one run at a time. A run with train.nproc = N takes N slots."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from prefect import get_run_logger
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext

from lmforge.core.config import Config
from lmforge.ops.deployments import GPU_TAG


def gpu_pool_of_this_run(cfg: Config) -> str | None:
    """The work pool this flow run came from when it trains on a GPU there: a deployment tagged `gpu`
    (prefect.yaml's GPU deployments; flow runs carry their deployment's tags) or train.device = cuda. None for a
    run outside a pool (`lmforge run`, `lmforge serve`), which has no pool-wide slot to share."""
    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx else None
    if run is None or not run.work_pool_name:
        return None
    return run.work_pool_name if GPU_TAG in (run.tags or []) or cfg.train.device == "cuda" else None


@contextmanager
def gpu_slot(cfg: Config) -> Iterator[None]:
    """Hold the GPU pool's slot(s) for the body; a no-op off a GPU pool. Without the limit on the server Prefect
    logs a warning and the body runs unlimited (`lmforge doctor` flags the missing limit)."""
    pool = gpu_pool_of_this_run(cfg)
    if pool is None:
        yield
        return
    logger = get_run_logger()
    logger.info("waiting for %d slot(s) of the global concurrency limit %s (one per GPU)", cfg.train.nproc, pool)
    holder = ConcurrencyLeaseHolder(type="flow_run", id=FlowRunContext.get().flow_run.id)
    with concurrency(pool, occupy=cfg.train.nproc, holder=holder):
        logger.info("holding %d slot(s) of %s while training", cfg.train.nproc, pool)
        yield
