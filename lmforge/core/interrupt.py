"""Ctrl-C and SIGTERM as a request, not an exception: the first signal sets a flag that long-running loops
(training) poll at a safe point, where they write a checkpoint and stop; a second signal stops at once.
Child processes started in a session of their own (DDP ranks under torchrun, which would otherwise kill them
on the terminal's Ctrl-C before they save) are asked through the file named by LMFORGE_STOP_FILE instead.
Standard library only."""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

class Interrupted(Exception):
    """Work stopped on a signal after saving what it had: training at `step` (where a re-run resumes), or
    another stage (`where`, step None)."""

    def __init__(self, step: int | None = None, where: str = ""):
        self.step, self.where = step, where
        self.message = (f"interrupted at step {step}; run the same command to resume" if step is not None
                        else f"interrupted{f' during {where}' if where else ''}; run the same command to start again")
        super().__init__(self.message)

    def __reduce__(self):  # picklable with its arguments (Prefect and Dask carry exceptions across processes)
        return (Interrupted, (self.step, self.where))


def check(where: str) -> None:
    """Raise Interrupted at a safe point of a loop that has nothing to save (data preparation)."""
    if _requested.is_set():
        raise Interrupted(None, where)


_requested = threading.Event()
_signal_name: list[str] = []


STOP_FILE = "LMFORGE_STOP_FILE"  # a process started in a session of its own (a DDP rank) is asked to stop by a file


def requested() -> bool:
    if _requested.is_set():
        return True
    stop_file = os.environ.get(STOP_FILE)
    return bool(stop_file) and os.path.exists(stop_file)


def signal_name() -> str:
    return _signal_name[0] if _signal_name else ""


def request(name: str = "request") -> None:
    _signal_name[:] = [name]
    _requested.set()


def clear() -> None:
    _requested.clear()
    _signal_name.clear()


@contextmanager
def graceful() -> Iterator[None]:
    """SIGINT/SIGTERM set the flag for the body (main thread only); a second one raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _requested.is_set():
            raise KeyboardInterrupt
        request(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
