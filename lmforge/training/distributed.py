"""Multi-process training on one host: the torchrun entry point (`python -m lmforge.training.distributed JOB.json`) and
`launch`, which runs it with `torchrun --standalone --nproc_per_node N` and returns rank 0's training summary.
The process-group primitives the training loop itself uses are in lmforge.training.ddp."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from lmforge.core import interrupt
from lmforge.core.atomic import write_json_atomic
from lmforge.training.checkpoint import Identity
from lmforge.core.config import Config
from lmforge.data.shards import open_shard
from lmforge.core.errors import LmforgeError
from lmforge.core.records import StartFrom
from lmforge.models import build_model
from lmforge.training.train import Hooks, TrainResult, train


def main(job_path: str) -> None:
    """torchrun entry point: every rank builds the model, trains, and rank 0 writes the summary atomically."""
    job = json.loads(Path(job_path).read_text())
    cfg = Config.from_dict(job["config"])  # the launching process's Config, through the same checks
    model = build_model(cfg.model, job["vocab_size"], seed=cfg.train.seed)  # the same initial weights on every rank
    data_dir = Path(job["data_dir"])
    identity = Identity(**job["identity"]) if job.get("identity") else None
    start = start_from_json(job["start"]) if job.get("start") else None
    try:
        with interrupt.graceful():  # Ctrl-C reaches every rank: they stop together at an evaluation step
            result = dataclasses.asdict(train(model, open_shard(data_dir, "train"), open_shard(data_dir, "val"),
                                              cfg.model.block_size, cfg.train, Path(job["ckpt_dir"]),
                                              identity=identity, start=start))
    except interrupt.Interrupted as stop:
        result = {"interrupted_at": stop.step}
    if int(os.environ.get("RANK", "0")) == 0:
        write_json_atomic(Path(job["result"]), result)


def start_from_json(d: dict) -> StartFrom:
    """The StartFrom that launch wrote into the job file."""
    paths = {k: Path(d[k]) if d[k] else None for k in ("ckpt_dir", "run_dir", "tokenizer_file")}
    return StartFrom(**{**d, **paths, "rows": tuple(d["rows"]) if d["rows"] is not None else None})


def exit_now(code: int = 0) -> None:
    """End a rank without interpreter teardown. After a finished job, torch's native threads aborted the exit
    now and then ("terminate called without an active exception", SIGABRT, ~1 run in 30 with gloo), which
    torchrun reports as a failed job; everything this rank wrote is already on disk."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def communicate_until_done(proc: subprocess.Popen, stop_file: Path, timeout_s: float | None) -> tuple[str, str]:
    """Wait for torchrun, turning this process's interrupt request into the ranks' stop file."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            return proc.communicate(timeout=0.5)
        except subprocess.TimeoutExpired:
            if interrupt.requested() and not stop_file.exists():
                stop_file.touch()
            if deadline is not None and time.monotonic() > deadline:
                raise


def launch(cfg: Config, data_dir: Path, vocab_size: int, ckpt_dir: Path, *, identity: Identity | None = None,
           start: StartFrom | None = None, timeout_s: float | None = None) -> dict:
    """Train cfg's model on train.nproc local processes; returns TrainResult as a dict (history included)."""
    ckpt_dir, nproc = Path(ckpt_dir), cfg.train.nproc
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    job_path, result_path = ckpt_dir / "ddp-job.json", ckpt_dir / "ddp-result.json"
    result_path.unlink(missing_ok=True)
    job = {"config": cfg.to_dict(), "vocab_size": vocab_size, "data_dir": str(data_dir), "ckpt_dir": str(ckpt_dir),
           "result": str(result_path), "identity": dataclasses.asdict(identity) if identity else None,
           "start": json.loads(json.dumps(dataclasses.asdict(start), default=str)) if start else None}
    write_json_atomic(job_path, job)
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", str(nproc), "-m", "lmforge.training.distributed",
           str(job_path)]
    stop_file = ckpt_dir / "stop-requested"
    stop_file.unlink(missing_ok=True)
    env = {**os.environ, interrupt.STOP_FILE: str(stop_file)}
    # its own session: the terminal's Ctrl-C reaches this process, which asks the ranks to stop (stop_file)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            out, err = communicate_until_done(proc, stop_file, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise LmforgeError(f"torchrun training with {nproc} processes ran past {timeout_s:.0f} s",
                               hint="lower train.max_steps or --set train.nproc=1") from None
    stop_file.unlink(missing_ok=True)
    if proc.returncode != 0 or not result_path.is_file():
        lines = (err + out).splitlines()
        cause = next((ln for ln in lines if re.match(r"[\w.]+(Error|Exception): ", ln)),  # a rank's own error
                     lines[-1] if lines else "no output")
        raise LmforgeError(f"torchrun training with {nproc} processes failed (exit {proc.returncode}): "
                           f"{cause.strip()[:300]}", hint="re-run with --set train.nproc=1 to see the error in-process")
    result = json.loads(result_path.read_text())
    if "interrupted_at" in result:
        raise interrupt.Interrupted(result["interrupted_at"])
    return result


def train_here_or_launch(model, cfg: Config, data, ckpt_dir: Path, hooks: Hooks, identity: Identity,
                         start: StartFrom | None = None) -> TrainResult:  # 7: the task's whole hand-over
    """One process (train() in this one) or train.nproc > 1 (DDP under torchrun; rank 0's evaluations reach
    hooks.log_eval once the job has finished, those up to the resume point left out: an earlier run logged them).
    data: a PreparedData record. SIGINT/SIGTERM ask training to save and stop (lmforge.core.interrupt), here again
    because Prefect's flow engine puts its own SIGTERM handler (an exception mid-step) in place of the CLI's."""
    with interrupt.graceful():
        if cfg.train.nproc <= 1:
            return train(model, open_shard(data.dir, "train"), open_shard(data.dir, "val"), cfg.model.block_size,
                         cfg.train, ckpt_dir, hooks=hooks, identity=identity, start=start)
        result = TrainResult(**launch(cfg, data.dir, data.vocab_size, ckpt_dir, identity=identity, start=start))
    for row in result.history:
        if row["step"] > result.resumed_from and hooks.log_eval:
            hooks.log_eval(row, row["step"])
    return result


if __name__ == "__main__":  # torchrun -m lmforge.training.distributed JOB.json
    main(sys.argv[1])
    exit_now(0)
