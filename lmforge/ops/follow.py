"""`lmforge runs --follow [FLOW_RUN]`: a deployment run's training from the terminal. Prints the flow run's log
lines as the Prefect API receives them (each evaluation's losses, the samples, the version it registers, the
promotion decision: every line its tasks log) until the run reaches a final state, then that state. Without a
FLOW_RUN, the newest run of an lmforge deployment (tag `lmforge`) that has not finished, else the newest one."""
from __future__ import annotations

import datetime
import logging
import sys
import time
import uuid

from lmforge.core.errors import LmforgeError

POLL_S = 1.0
LEVELS = {logging.DEBUG: "DEBUG", logging.INFO: "INFO", logging.WARNING: "WARNING", logging.ERROR: "ERROR",
          logging.CRITICAL: "CRITICAL"}


def find_run(client, which: str | None):
    """The flow run named or identified by `which`, or the newest lmforge deployment run (unfinished first)."""
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterExpectedStartTime, FlowRunFilterName,
                                                FlowRunFilterTags)
    from prefect.client.schemas.sorting import FlowRunSort

    if which:
        try:
            return client.read_flow_run(uuid.UUID(which))
        except ValueError:
            found = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[which])), limit=1)
        except Exception:  # noqa: BLE001 - ObjectNotFound
            found = []
        if not found:
            raise LmforgeError(f"no flow run {which!r} on the Prefect server",
                               hint="`prefect flow-run ls` lists them; or leave FLOW_RUN out for the newest")
        return found[0]
    due = FlowRunFilter(tags=FlowRunFilterTags(all_=["lmforge"]),  # not the schedules' future runs
                        expected_start_time=FlowRunFilterExpectedStartTime(
                            before_=datetime.datetime.now(datetime.timezone.utc)))
    runs = client.read_flow_runs(flow_run_filter=due, sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=50)
    if not runs:
        raise LmforgeError("no run of an lmforge deployment on the Prefect server yet",
                           hint="prefect deployment run 'lmforge-pipeline/jokes-char'")
    live = [r for r in runs if r.state and not r.state.is_final()]
    return (live or runs)[0]


def log_line(log) -> str:
    when = log.timestamp.astimezone().strftime("%H:%M:%S")
    return f"{when} {LEVELS.get(log.level, log.level)} {log.name}: {log.message}"


def follow(which: str | None = None, out=None, poll_s: float = POLL_S) -> str:
    """Print the run's logs until it is final; returns the final state's name."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    out = out or sys.stdout
    with get_client(sync_client=True) as client:
        run = find_run(client, which)
        print(f"following flow run {run.name} ({run.id}), {run.state.name if run.state else 'no state'}",
              file=out, flush=True)
        seen: set = set()
        state = run.state
        while True:
            final = state is not None and state.is_final()
            offset = 0
            while True:  # every log line not printed yet, oldest first
                page = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                                        sort=LogSort.TIMESTAMP_ASC, limit=200, offset=offset)
                for log in page:
                    if log.id not in seen:
                        seen.add(log.id)
                        print(log_line(log), file=out, flush=True)
                if len(page) < 200:
                    break
                offset += len(page)
            if final:
                break
            time.sleep(poll_s)
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                time.sleep(3 * poll_s)  # the last lines reach the API in the run's final log batch
        message = f": {state.message}" if state.message else ""
        print(f"flow run {run.name}: {state.name}{message}", file=out, flush=True)
        return state.name
