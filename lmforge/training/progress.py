"""Training progress: a rich bar (step, loss, tokens/s, ETA) when stderr is a terminal and CI is unset; plain
log lines (about every 10% of the steps) otherwise, so CI logs and Prefect logs stay readable."""
from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("lmforge.training.train")


def fancy_output(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("CI")


class TrainProgress:
    """Call with (step, max_steps, loss, tokens_per_s) as training reports (every train.log_interval steps); use as
    a context manager. Plain lines come at the first report past each tenth of max_steps, and at the end."""

    def __init__(self, description: str = "train", fancy: bool | None = None):
        self.description = description
        self.fancy = fancy_output() if fancy is None else fancy
        self._bar = self._task = None
        self._t0 = time.perf_counter()
        self._first_step: int | None = None
        self._next_line = 0  # the step from which the next plain line is due
        self.lines: list[str] = []  # the plain lines emitted (what a log reader sees)

    def __enter__(self) -> "TrainProgress":
        if self.fancy:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:,.0f} tok/s"),
                                 TimeRemainingColumn(), transient=False)
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, step: int, max_steps: int, loss: float, tokens_per_s: float) -> None:
        if self._first_step is None:  # a resumed run starts mid-way; the ETA counts only steps done here
            self._first_step, self._t0 = step - 1, time.perf_counter()
        if self._bar is not None:
            if self._task is None:
                self._task = self._bar.add_task(self.description, total=max_steps, completed=step, loss=loss,
                                                tps=tokens_per_s)
            self._bar.update(self._task, completed=step, loss=loss, tps=tokens_per_s)
            return
        every = max(1, max_steps // 10)
        if step < self._next_line and step != max_steps:
            return
        self._next_line = (step // every + 1) * every
        done = step - self._first_step
        eta = (time.perf_counter() - self._t0) / max(done, 1) * (max_steps - step)
        line = f"{self.description} step {step}/{max_steps}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  eta {eta:.0f}s"
        self.lines.append(line)
        log.info(line)
