"""One process at a time per prepared-data directory and per run directory.

A scheduled run and a manual run of the same config (or two workers) would otherwise write the same shards
and checkpoints at once. `hold` takes an exclusive lock file (filelock: fcntl on Unix, released by the kernel
when the holder dies, so a killed process never leaves a stale lock) and writes a small note beside it naming
the holder, so whoever waits can say for whom."""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from lmforge.core.atomic import write_json_atomic
from lmforge.core.errors import LmforgeError

log = logging.getLogger("lmforge.core.locks")


def _holder(lock: Path) -> str:
    try:
        note = json.loads(lock.with_name(lock.name + ".holder").read_text())
    except (OSError, ValueError):
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(note.get("since", 0)))
    return f"pid {note.get('pid')} on {note.get('host')} (since {since})"


@contextmanager
def hold(lock: Path, what: str, wait: bool = True, logger: logging.Logger | logging.LoggerAdapter | None = None
         ) -> Iterator[None]:
    """Hold `lock` for the body. Busy: wait for it, saying once for whom (wait=True), or stop with one line."""
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    file_lock = FileLock(str(lock))
    try:
        file_lock.acquire(timeout=0)
    except Timeout:
        holder = _holder(lock)
        if not wait:
            raise LmforgeError(f"{what} is in use by {holder}", hint="wait for it to finish, or drop --no-wait to "
                               "queue behind it") from None
        (logger or log).info("waiting for %s, which holds %s", holder, what)
        file_lock.acquire()
    note = lock.with_name(lock.name + ".holder")
    write_json_atomic(note, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                             "command": " ".join(sys.argv)[:300]})
    try:
        yield
    finally:
        note.unlink(missing_ok=True)
        file_lock.release()
