"""Training on a shared CPU worker: lmforge's training loop (shakespeare-char's model and batch on random tokens)
alone, then beside a second CPU-bound process (a one-core Python busy loop), for each thread policy:

  torch-default  torch's own threads (one per core) and OpenMP's default wait policy: lmforge before issue #29
  lmforge        train.threads = 0: threads re-picked from the cores other work leaves free
                 (lmforge/training/threads.py), OpenMP's default wait policy (what lmforge runs with)
  lmforge-passive  the same thread picks with OMP_WAIT_POLICY=PASSIVE (does the wait policy still matter?)

Each measurement is its own process (OpenMP reads its wait policy at start-up). Quiet and loaded blocks
alternate, round by round, so a change in the machine's background load hits both; /proc/loadavg is written
beside each block. Reported: tokens/s quiet and beside the competitor and their ratio (goal: lmforge >= 0.4x),
and the competitor's own rate alone and beside training (both sides of the contention).

    python benchmarks/contention.py [--quick] [--rounds R] [--steps N] [--policies NAME ...]
Writes benchmarks/results/contention-<time>.json and .md and prints the table."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
POLICIES = {
    "torch-default": {"threads": str(os.cpu_count() or 1), "env": {"OMP_WAIT_POLICY": None}},
    "lmforge": {"threads": "0", "env": {"OMP_WAIT_POLICY": None}},
    "lmforge-passive": {"threads": "0", "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
}
COMPETITOR = """
import signal, sys, time
n, t0, stop = 0, time.perf_counter(), []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
while not stop:
    for _ in range(10000):
        n += 1
print(n / (time.perf_counter() - t0))
"""


def worker(steps: int, threads: int, out: Path) -> None:
    """One measurement: train `steps` steps and write tokens/s over the steps after the first 10 (the first
    ones warm caches and allocators) and the threads used at the end."""
    import numpy as np
    import torch

    from lmforge.core.config import load_config
    from lmforge.models import build_model
    from lmforge.training.train import Hooks, train

    cfg = load_config("shakespeare-char", {"train.max_steps": steps, "train.eval_interval": steps,
                                           "train.eval_iters": 1, "train.threads": threads,
                                           "train.log_interval": 1, "train.device": "cpu"})
    data = np.random.default_rng(0).integers(0, 65, 200_000).astype(np.uint16)
    times: dict[int, float] = {}
    hooks = Hooks(progress=lambda step, total, loss, tps: times.__setitem__(step, time.perf_counter()))
    model = build_model(cfg.model, 65, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        train(model, data[:180_000], data[180_000:], cfg.model.block_size, cfg.train, Path(tmp), hooks=hooks,
              resume=False)
    first, last = 10, steps - 1  # the last step includes the evaluation and a checkpoint: left out
    tokens = (last - first) * cfg.train.batch_size * cfg.model.block_size
    out.write_text(json.dumps({"tokens_per_s": tokens / (times[last] - times[first]),
                               "threads_at_end": torch.get_num_threads()}))


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").is_file() else "-"


def measure(policy: str, steps: int, competitor: bool, tmp: Path) -> dict:
    spec = POLICIES[policy]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for key, value in spec["env"].items():
        env.pop(key, None) if value is None else env.__setitem__(key, value)
    out = tmp / f"{policy}-{competitor}-{time.monotonic_ns()}.json"
    rival = subprocess.Popen([sys.executable, "-c", COMPETITOR], stdout=subprocess.PIPE, text=True) \
        if competitor else None
    before = loadavg()
    try:
        time.sleep(1.0 if competitor else 0.0)  # the competitor is running before training looks at the load
        subprocess.run([sys.executable, __file__, "--worker", "--steps", str(steps), "--threads", spec["threads"],
                        "--out", str(out)], env=env, check=True, timeout=1800)
    finally:
        rate = None
        if rival:
            rival.terminate()
            rate = float(rival.communicate(timeout=30)[0] or "nan")
    return {**json.loads(out.read_text()), "competitor_rate": rate, "load_before": before, "load_after": loadavg()}


def competitor_alone(seconds: float) -> float:
    rival = subprocess.Popen([sys.executable, "-c", COMPETITOR], stdout=subprocess.PIPE, text=True)
    time.sleep(seconds)
    rival.terminate()
    return float(rival.communicate(timeout=30)[0])


def summarise(policy: str, rounds: list[dict]) -> dict:
    quiet = statistics.median(r["quiet"]["tokens_per_s"] for r in rounds)
    loaded = statistics.median(r["loaded"]["tokens_per_s"] for r in rounds)
    ratios = [r["loaded"]["tokens_per_s"] / r["quiet"]["tokens_per_s"] for r in rounds]
    return {"policy": policy, "quiet_tokens_per_s": round(quiet), "loaded_tokens_per_s": round(loaded),
            "ratio": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
            "competitor_beside": round(statistics.median(r["loaded"]["competitor_rate"] for r in rounds)),
            "threads_quiet": [r["quiet"]["threads_at_end"] for r in rounds],
            "threads_loaded": [r["loaded"]["threads_at_end"] for r in rounds],
            "load": [f'{r["quiet"]["load_before"]} / {r["loaded"]["load_before"]}' for r in rounds]}


def markdown(summary: list[dict], alone: float, header: str) -> str:
    lines = [header, "", f"competitor alone: {alone:,.0f} loop iterations/s", "",
             "| policy | tokens/s quiet | tokens/s beside 1 CPU-bound process | ratio (median, min-max) | "
             "competitor beside training (it/s) | threads quiet / loaded | load avg (quiet / loaded block) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary:
        lines.append(f"| {s['policy']} | {s['quiet_tokens_per_s']:,} | {s['loaded_tokens_per_s']:,} | "
                     f"{s['ratio']:.2f}x ({s['ratio_min']:.2f}-{s['ratio_max']:.2f}) | {s['competitor_beside']:,} | "
                     f"{s['threads_quiet']} / {s['threads_loaded']} | {'; '.join(s['load'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 60 steps per block (a smoke run)")
    ap.add_argument("--rounds", type=int, default=3, help="quiet/loaded pairs per policy")
    ap.add_argument("--steps", type=int, default=300, help="training steps per block")
    ap.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    ap.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.steps, args.threads, args.out)
        return 0
    rounds, steps = (1, 60) if args.quick else (args.rounds, args.steps)
    started = time.strftime("%Y%m%d-%H%M%S")
    per_policy: dict[str, list[dict]] = {p: [] for p in args.policies}
    with tempfile.TemporaryDirectory(prefix="lmforge-contention-") as tmp:
        alone = competitor_alone(5.0)
        for _ in range(rounds):
            for policy in args.policies:  # interleaved: each round measures every policy, quiet then loaded
                quiet = measure(policy, steps, False, Path(tmp))
                loaded = measure(policy, steps, True, Path(tmp))
                per_policy[policy].append({"quiet": quiet, "loaded": loaded})
                print(f"{policy}: quiet {quiet['tokens_per_s']:,.0f} tok/s, beside a competitor "
                      f"{loaded['tokens_per_s']:,.0f} tok/s (load {quiet['load_before']} / {loaded['load_before']})",
                      file=sys.stderr)
    summary = [summarise(p, r) for p, r in per_policy.items()]
    command = "python benchmarks/contention.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"# contention {started}\n\n`{command.strip()}` on {platform.processor() or platform.machine()}, "
              f"{len(os.sched_getaffinity(0))} cores, {rounds} round(s) of {steps} steps per block")
    result = {"command": command.strip(), "rounds": rounds, "steps": steps, "competitor_alone": alone,
              "summary": summary, "raw": per_policy}
    RESULTS.mkdir(exist_ok=True)
    for suffix, text in ((".json", json.dumps(result, indent=2)), (".md", markdown(summary, alone, header))):
        (RESULTS / f"contention-{started}{suffix}").write_text(text)
    print(json.dumps(result) if args.json else markdown(summary, alone, header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
