"""Everyday use from a terminal, with real processes: Ctrl-C mid-training (one line, exit 130, a checkpoint at
the step reached, the MLflow run KILLED, the Prefect flow run Cancelled, and a re-run that says it resumes
before it trains), a PREFECT_API_URL that is gone, a reader that closes the pipe, time on log lines."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import REPO, TINY
from test_deploy import free_port

# big enough that 400 steps take seconds, so the interrupt lands mid-training
SLOW = {**TINY, "model.n_embd": 96, "model.n_head": 4, "model.n_layer": 2, "model.block_size": 64,
        "train.batch_size": 16, "train.max_steps": 400, "train.eval_interval": 200, "train.threads": 1}
LINE = re.compile(r"^interrupted at step (\d+); run the same command to resume$")


def env_for(tmp: Path) -> dict:
    """A user's shell: no PREFECT_API_URL (lmforge starts Prefect's temporary server), artifacts of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "LMFORGE_ARTIFACTS": str(tmp / "artifacts"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
            "CI": "true"}


def lmforge(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmforge.cli", *args]


def run_args(overrides: dict) -> list[str]:
    return ["run", "--preset", "jokes-char", "--json", *[a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]]


class Stderr(threading.Thread):
    """Collects a process's stderr lines as they come."""

    def __init__(self, proc: subprocess.Popen):
        super().__init__(daemon=True)
        self.proc, self.lines = proc, []
        self.start()

    def run(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, ln) for ln in self.lines):
                return
            assert self.proc.poll() is None, "\n".join(self.lines[-40:])
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines[-40:]))


def test_ctrl_c_mid_training_stops_saves_and_resumes(tmp_path):
    env = env_for(tmp_path)
    proc = subprocess.Popen(lmforge(*run_args(SLOW)), env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    err = Stderr(proc)
    err.wait_for(r"train jokes-char step 40/400")  # training has begun
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
    proc.wait(120)
    err.join(10)
    assert proc.returncode == 130, "\n".join(err.lines[-40:])
    step = int(LINE.match(err.lines[-1]).group(1))
    assert 40 <= step < 400
    assert not [ln for ln in err.lines if "Traceback" in ln or "ConnectError" in ln or "Error logging" in ln]
    timed = re.compile(r"^(\d{4}/\d\d/\d\d )?\d\d:\d\d:\d\d ")  # lmforge's and Prefect's lines; MLflow's own
    info = [ln for ln in err.lines if " INFO " in ln]
    assert info and all(timed.match(ln) for ln in info)  # every log line carries a time
    (state,) = Path(env["LMFORGE_ARTIFACTS"]).glob("runs/*/ckpt/last/state.json")
    assert json.loads(state.read_text())["step"] == step

    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("lmforge-jokes-char").experiment_id])
    assert run.info.status == "KILLED"
    with sqlite3.connect(tmp_path / "prefect-home" / "prefect.db") as db:  # the temporary server's own records
        states = db.execute("select f.name, fr.state_type from flow_run fr join flow f on f.id = fr.flow_id").fetchall()
    assert states == [("lmforge-pipeline", "CANCELLED")]

    again = subprocess.run(lmforge(*run_args(SLOW)), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = again.stderr.splitlines()
    resumed = next(i for i, ln in enumerate(lines) if f"resuming from step {step} of 400" in ln)
    first_progress = next(i for i, ln in enumerate(lines) if re.search(r"train jokes-char step \d+/400", ln))
    assert resumed < first_progress  # it says so before it trains
    assert json.loads(again.stdout.strip().splitlines()[-1])["metrics"]["resumed_from"] == step


def test_sigterm_mid_training_stops_and_saves_like_ctrl_c(tmp_path):
    """What a scheduler or `kill` sends: Prefect's flow engine has its own SIGTERM handler (an exception in the
    middle of a step, a traceback); training's own takes its place, so it saves and stops as on Ctrl-C."""
    env = env_for(tmp_path)
    proc = subprocess.Popen(lmforge(*run_args(SLOW)), env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    err = Stderr(proc)
    err.wait_for(r"train jokes-char step 40/400")
    proc.send_signal(signal.SIGTERM)  # the process only, as `kill PID` does
    proc.wait(120)
    err.join(10)
    assert proc.returncode == 130, "\n".join(err.lines[-40:])
    step = int(LINE.match(err.lines[-1]).group(1))
    assert not [ln for ln in err.lines if "Traceback" in ln or "TerminationSignal" in ln or "Crash" in ln]
    (state,) = Path(env["LMFORGE_ARTIFACTS"]).glob("runs/*/ckpt/last/state.json")
    assert json.loads(state.read_text())["step"] == step


def test_a_prefect_api_url_that_is_gone_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    env = {**env_for(tmp_path), "PREFECT_API_URL": url}
    out = subprocess.run(lmforge("run", "--set", "train.max_steps=5"), env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: the Prefect API at {url} (PREFECT_API_URL) does not answer")
    assert "prefect server start" in out.stderr and "prefect config unset PREFECT_API_URL" in out.stderr
    assert not (tmp_path / "artifacts").exists()  # nothing started


def test_a_reader_that_closes_the_pipe_gets_no_traceback(tmp_path):
    proc = subprocess.Popen(lmforge("presets"), env=env_for(tmp_path), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # `lmforge presets | head -0`: the reader is gone before anything is written
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141 and err == ""


def test_training_progress_is_a_bar_on_a_terminal_and_a_line_a_tenth_elsewhere(monkeypatch):
    """docs/reliability.md: a rich bar when stderr is a terminal and CI is unset; otherwise one log line about
    every 10% of the steps."""
    import io

    from lmforge.training.progress import TrainProgress, fancy_output

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("CI", raising=False)
    assert fancy_output(Terminal()) and not fancy_output(io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not fancy_output(Terminal())
    with TrainProgress("train t", fancy=False) as progress:
        for step in range(1, 101):
            progress(step, 100, 1.0, 10.0)
    steps = [int(re.search(r"step (\d+)/100", line).group(1)) for line in progress.lines]
    assert set(range(10, 101, 10)) <= set(steps) and len(steps) <= 11
