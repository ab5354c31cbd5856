"""Training threads on a shared CPU worker: as many torch threads as the cores this process may run on leave free
of other work, re-picked as that work comes and goes, so a run slows in proportion to the load instead of
collapsing (docs/quality.md "Training on a shared worker").

Why: torch's intra-op threads meet at a barrier after every parallel region (each matmul, each elementwise op),
and OpenMP threads spin while they wait there. Two threads on two cores where another process holds one core
means every region waits for the descheduled thread and the spinning one burns the core it needs: measured, a
run that trained ~8,700 tokens/s quiet did ~1,100 at a load of ~4.5. Fewer threads than busy cores never wait at
a barrier on a thread that is not running.

- cores: os.sched_getaffinity (a container's or taskset's CPU set, not the host's count);
- others' load: the busy time of those cores in /proc/stat over an interval, less this process's own CPU time
  (resource.getrusage) over the same interval;
- threads = the cores not busy with others' work, rounded, at least 1; re-picked about every `every_s` seconds
  (train.threads = 0). train.threads = N pins N threads; train.deterministic picks once, at the start.
- OpenMP's wait policy is left as it is: with no more threads than free cores no thread waits long at a
  barrier, and benchmarks/contention.py measures OMP_WAIT_POLICY=PASSIVE beside it (docs/quality.md)."""
from __future__ import annotations

import os
import resource
import time

import torch


def available_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def _busy_jiffies(cores: list[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies summed over `cores` from /proc/stat, or None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    wanted, busy, total = {f"cpu{c}" for c in cores}, 0, 0
    for line in lines:
        name, *fields = line.split()
        if name in wanted:
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(values)
            busy += sum(values) - values[3] - values[4]
    return busy, total


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pick(cores: int, others: float) -> int:
    """Threads for `cores` cores while other processes keep `others` cores busy (the rest is ours)."""
    return max(1, min(cores, int(cores - others + 0.3)))  # a core more than 70% busy with others is not ours


class ThreadPicker:
    """Samples the cores' busy time and this process's CPU time; `update()` sets torch's intra-op threads to
    pick(cores, others) when at least `every_s` seconds have passed since the last sample."""

    def __init__(self, every_s: float = 5.0, adjust: bool = True):
        self.cores, self.every_s, self.adjust = available_cores(), every_s, adjust
        self.threads = torch.get_num_threads()
        self._mark = self._sample()

    def _sample(self) -> tuple[float, tuple[int, int] | None, float]:
        return time.monotonic(), _busy_jiffies(self.cores), _own_cpu_s()

    def others(self, then: tuple, now: tuple) -> float | None:
        """Cores kept busy by other processes between two samples."""
        (t0, j0, own0), (t1, j1, own1) = then, now
        if j0 is None or j1 is None or j1[1] <= j0[1] or t1 <= t0:
            return None
        busy_cores = len(self.cores) * (j1[0] - j0[0]) / (j1[1] - j0[1])
        return max(0.0, busy_cores - (own1 - own0) / (t1 - t0))

    def start(self, probe_s: float = 0.25) -> int:
        """The first pick, from a short look at the cores before training starts."""
        time.sleep(probe_s)
        return self._set(self._sample())

    def update(self) -> int:
        if not self.adjust or time.monotonic() - self._mark[0] < self.every_s:
            return self.threads
        return self._set(self._sample())

    def _set(self, now: tuple) -> int:
        others = self.others(self._mark, now)
        self._mark = now
        if others is not None:
            threads = pick(len(self.cores), others)
            if threads != self.threads:
                torch.set_num_threads(threads)
                self.threads = threads
        return self.threads
