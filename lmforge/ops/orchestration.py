"""Running lmforge's Prefect flows from a terminal, as a user expects a command to behave:

- the Prefect API: the server PREFECT_API_URL names (checked first: a server that is gone is one line naming
  the URL and the two fixes), or Prefect's temporary server started here in a session of its own, so Ctrl-C
  reaches lmforge (which records the flow run's end) and not the server first;
- Ctrl-C / SIGTERM: a request the training loop answers with a checkpoint; the flow run ends Cancelled, the
  MLflow run KILLED, and the terminal shows one line;
- a user error raised inside a task reaches the terminal once, as lmforge's `error:` line: the terminal's log
  handlers drop Prefect's records of it (its traceback stays in the Prefect run's own logs);
- optionally a Dask task runner for the data tasks.
Prefect is imported here, never by the library."""
from __future__ import annotations

import logging
import os
import re
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Iterator

from lmforge.core import interrupt
from lmforge.core.errors import LmforgeError

USER_ERRORS = ("LmforgeError", "Interrupted")
STARTUP_TIMEOUT_S = 120  # Prefect waits 20 s by default; a loaded 2-core machine has taken longer


def prefect_env() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")


class HideUserErrors(logging.Filter):
    """Drop Prefect's log records about a user error (lmforge prints it once, as one line) and its records of
    an interrupt; every other record, real bugs' tracebacks included, passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect"):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ in USER_ERRORS:
            return False
        text = record.getMessage()
        return not any(name in text for name in USER_ERRORS)


def quiet_user_errors_on_terminal() -> None:
    """Attach HideUserErrors to every handler that writes to the terminal (root's and Prefect's own)."""
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
                                        if n.startswith("prefect")]
    for lg in loggers:
        for h in getattr(lg, "handlers", []):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) and \
                    not any(isinstance(f, HideUserErrors) for f in h.filters):
                h.addFilter(HideUserErrors())


def check_api(url: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when the configured Prefect API does not answer."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise LmforgeError(f"the Prefect API at {url} (PREFECT_API_URL) does not answer: "
                           f"{getattr(exc, 'reason', exc)}",
                           hint="start it (`prefect server start`), or unset it "
                                "(`prefect config unset PREFECT_API_URL`) to use a temporary server") from None


def configured_api(command: str) -> str:
    """The Prefect API a command that operates deployments talks to: PREFECT_API_URL (environment or profile),
    answering. Never a temporary server: schedules, workers and automations live on a server that stays up."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise LmforgeError(f"`lmforge {command}` needs the Prefect server your deployments are on, and "
                           "PREFECT_API_URL is not set", hint="prefect server start, then prefect config set "
                           "PREFECT_API_URL=http://127.0.0.1:4200/api")
    check_api(url)
    return url


def temporary_server():
    """Prefect's temporary local server, its process in a session of its own (Prefect starts it in ours)."""
    from prefect.server.api import server as prefect_server

    class IsolatedServer(prefect_server.SubprocessASGIServer):
        def _run_uvicorn_command(self):
            popen = prefect_server.subprocess.Popen
            prefect_server.subprocess.Popen = lambda *a, **kw: popen(*a, start_new_session=True, **kw)
            try:
                return super()._run_uvicorn_command()
            finally:
                prefect_server.subprocess.Popen = popen

    return IsolatedServer()


@contextmanager
def prefect_api() -> Iterator[str]:
    """The Prefect API URL to run flows against for the body (checked, or a temporary server of ours)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        check_api(configured)
        yield configured
        return
    server = temporary_server()
    with startup_lock():
        try:
            server.start(timeout=STARTUP_TIMEOUT_S)
        except RuntimeError as exc:
            raise LmforgeError(f"Prefect's temporary server did not start: {str(exc).splitlines()[0][:200]}",
                               hint="start one (`prefect server start`) and set PREFECT_API_URL, or retry on a "
                                    "less busy machine") from None
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                drain_to_api()
    finally:
        server.stop()


@contextmanager
def startup_lock() -> Iterator[None]:
    """Temporary servers of two lmforge processes share PREFECT_HOME's database; each creates or migrates its
    tables at startup, and two doing it at once collide ("table ... already exists"): one starts at a time."""
    from filelock import FileLock
    from prefect.settings import PREFECT_HOME

    home = PREFECT_HOME.value()
    home.mkdir(parents=True, exist_ok=True)
    with FileLock(str(home / "lmforge-server-start.lock")):
        yield


def drain_to_api() -> None:
    """Send the logs and events still queued for the API while the server is up (as Prefect's test harness
    does): a stopped server would otherwise leave the exit waiting out the workers' retries."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.instance().drain()
    except RuntimeError:  # never started
        pass
    EventsWorker.drain_all()


def dask_task_runner(spec: str):
    """--dask local:N (a local cluster of N worker processes) or tcp://HOST:PORT (a running scheduler)."""
    from prefect_dask import DaskTaskRunner

    if spec.startswith("local:") and spec[6:].isdigit() and int(spec[6:]) > 0:
        return DaskTaskRunner(cluster_kwargs={"n_workers": int(spec[6:]), "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    if spec.startswith(("tcp://", "tls://")):
        return DaskTaskRunner(address=spec)
    raise LmforgeError(f"--dask {spec!r} is neither local:N nor a scheduler address",
                       hint="--dask local:2, or --dask tcp://HOST:8786 for a running `dask scheduler`")


def run_flow(flow, dask: str | None = None, **parameters) -> dict:
    """Run `flow` in this process with Ctrl-C handled; returns its result. A run that was interrupted raises
    interrupt.Interrupted (its message says where to resume); a failed one raises its exception."""
    if dask:
        flow = flow.with_options(task_runner=dask_task_runner(dask))
    quiet_user_errors_on_terminal()
    with prefect_api(), interrupt.graceful():
        state = flow(**parameters, return_state=True)
    if state.is_cancelled() and interrupt.requested():
        m = re.search(r"at step (\d+)", state.message or "")
        raise interrupt.Interrupted(int(m.group(1)) if m else None, "" if m else "the run")
    return state.result()
