"""Training threads on a shared worker (lmforge/training/threads.py): as many threads as the cores other work
leaves free. Figures from a run beside a competing process: benchmarks/contention.py, docs/quality.md."""
from __future__ import annotations

import subprocess
import sys

import torch

from lmforge.training.threads import ThreadPicker, available_cores, pick

BUSY = "while True: pass"


def test_threads_are_the_cores_others_leave_free():
    assert [pick(2, others) for others in (0.0, 0.2, 0.5, 1.0, 1.6, 9.0)] == [2, 2, 1, 1, 1, 1]
    assert pick(8, 2.0) == 6 and pick(1, 0.0) == 1


def test_others_load_leaves_out_this_process_own_time():
    picker = ThreadPicker.__new__(ThreadPicker)
    picker.cores = [0, 1]
    # 2 cores for 1 s: 150 of 200 jiffies busy, of which this process used 0.5 s: others kept 1 core busy
    assert picker.others((0.0, (0, 0), 0.0), (1.0, (150, 200), 0.5)) == 1.0
    assert picker.others((0.0, None, 0.0), (1.0, (150, 200), 0.5)) is None  # no /proc/stat


def test_a_busy_process_on_every_core_leaves_one_thread(one_torch_thread):
    """A CPU-bound process per core this one may run on: whatever else the machine does, training takes one
    thread, not one per core that would wait on each other at every barrier."""
    torch.set_num_threads(len(available_cores()))
    rivals = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in available_cores()]
    try:
        picker = ThreadPicker(every_s=0.0)
        assert picker.start(probe_s=1.0) == 1 == torch.get_num_threads()
    finally:
        for r in rivals:
            r.kill()
            r.wait()
