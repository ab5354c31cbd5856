"""Deployments on real parts, as README.md's "Scheduling with Prefect" block runs them: `prefect server start`,
both work pools, a process worker, `prefect deploy --all` (all six deployments, exit 0, no traceback) and a
deployment run through the worker; and a killed `lmforge run` that resumes from its checkpoint when re-run."""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, TINY, readme_commands

PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    """End a subprocess started in its own session, and its children."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


SCHEDULING = readme_commands("## Scheduling with Prefect")
DEPLOYMENTS = {"jokes-char": "lmforge-cpu", "shakespeare-char": "lmforge-cpu", "lebanon-gru": "lmforge-cpu",
               "tinystories-lstm": "lmforge-gpu", "imdb-gpt": "lmforge-gpu", "jokes-gpt2": "lmforge-gpu"}


def isolated_env(tmp: Path, port: int) -> dict:
    """What every subprocess here gets: its own PREFECT_HOME (the README's `prefect config set` writes there),
    artifacts directory and MLflow store, so nothing touches the session's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "LMFORGE_ARTIFACTS": str(tmp / "artifacts"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
            "PWD": str(REPO), "CI": "true", "PREFECT_WORKER_QUERY_SECONDS": "1"}


def as_run_here(line: str, port: int) -> list[str]:
    """A README line as this test runs it: `prefect` is the venv's (what `source .venv/bin/activate` gives),
    the server on a free port instead of 4200."""
    words = shlex.split(line.replace("127.0.0.1:4200", f"127.0.0.1:{port}"))
    assert words[0] == "prefect", line
    if words[1:3] == ["server", "start"]:
        words += ["--host", "127.0.0.1", "--port", str(port)]
    return [PREFECT, *words[1:]]


@pytest.fixture(scope="module")
def readme_sequence(tmp_path_factory):
    """README.md's scheduling block, line by line: the server and the worker start in the background (their own
    terminals), every other line must exit 0 without a traceback. Yields the environment and the outputs."""
    tmp = tmp_path_factory.mktemp("deploy")
    port = free_port()
    env = isolated_env(tmp, port)
    background, outputs = [], {}
    try:
        for line in SCHEDULING:
            cmd = as_run_here(line, port)
            if cmd[1:3] in (["server", "start"], ["worker", "start"]):
                log = open(tmp / f"{cmd[1]}.log", "w")
                background.append((subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True), log))
                if cmd[1] == "server":
                    wait_http(f"http://127.0.0.1:{port}/api/health", background[-1][0], 90)
                continue
            out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
            text = out.stdout + out.stderr
            worker_log = (tmp / "worker.log").read_text()[-4000:] if (tmp / "worker.log").exists() else ""
            assert out.returncode == 0, f"{line}\n{text[-4000:]}\n{worker_log}"
            assert "Traceback" not in text and "An exception occurred" not in text, f"{line}\n{text[-4000:]}"
            outputs[line] = text
        yield {"env": env, "tmp": tmp, "outputs": outputs}
    finally:
        for proc, log in reversed(background):
            stop(proc)
            log.close()


def test_readme_scheduling_block_creates_all_six_deployments(readme_sequence):
    env = readme_sequence["env"]
    assert any(line.endswith("deploy --all") for line in readme_sequence["outputs"])
    listed = {d["name"] for d in json.loads(prefect(env, "deployment", "ls", "--output", "json").stdout)}
    assert listed == set(DEPLOYMENTS)
    for name, pool in DEPLOYMENTS.items():
        shown = json.loads(prefect(env, "deployment", "inspect", f"lmforge-pipeline/{name}", "--output",
                                   "json").stdout)
        warm = {"train.init_from": "champion"} if name == "jokes-char" else {}  # nightly warm starts
        assert shown["parameters"] == {"preset": name, "overrides": {"promote.auto": True, **warm}}  # and promotion
        assert shown["work_pool_name"] == pool
        assert shown["global_concurrency_limit"]["limit"] == 1  # one run at a time; the next one waits
        assert shown["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        assert shown["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)
        assert [(s["schedule"]["cron"], s["active"]) for s in shown["schedules"]] == [("0 2 * * *", False)]


def test_readme_deployment_run_completes_through_the_worker(readme_sequence, monkeypatch):
    env = readme_sequence["env"]
    run_line = next(line for line in readme_sequence["outputs"] if "deployment run" in line)
    assert "Completed" in readme_sequence["outputs"][run_line]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    from lmforge.registry.tracking import client

    mv = client().get_model_version_by_alias("jokes-char", "candidate")
    run = client().get_run(mv.run_id)
    assert mv.tags["preset"] == "jokes-char" and float(mv.tags["val_loss"]) > 0
    assert run.data.params["train.max_steps"] == "50" and run.info.status == "FINISHED"
    # its --params brought their own overrides, without promote.auto: Prefect replaced the deployment's, no promotion
    assert run.data.params["promote.auto"] == "False" and "promotion_decision" not in mv.tags


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A bare Prefect server for the tests below."""
    tmp = tmp_path_factory.mktemp("server")
    port = free_port()
    env = {**isolated_env(tmp, port), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", proc, 90)
        yield {"env": env, "tmp": tmp}
    finally:
        stop(proc)
        log.close()


def prefect(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    out = subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"prefect {' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_killed_run_resumes_to_the_same_model_as_an_uninterrupted_run(server):
    """`lmforge run` killed with SIGKILL, then run again: the same final losses and the same weights (the
    registry finds the uninterrupted run's model identical to the resumed one) as a run never interrupted."""
    env = {**server["env"], "LMFORGE_ARTIFACTS": str(server["tmp"] / "resume-artifacts")}
    overrides = {**TINY, "model.n_embd": 64, "model.n_layer": 2, "train.batch_size": 16, "train.max_steps": 120,
                 "train.eval_interval": 10, "train.deterministic": "true", "train.threads": 1}
    cmd = [sys.executable, "-m", "lmforge.cli", "run", "--preset", "jokes-char", "--json",
           *[a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]]
    first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    runs = Path(env["LMFORGE_ARTIFACTS"]) / "runs"
    deadline = time.monotonic() + 180
    try:
        while not list(runs.glob("*/ckpt/last/state.json")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)  # a crash mid-training: no cleanup runs
    finally:
        first.wait(30)
    assert first.returncode == -signal.SIGKILL, "the first run ended before it could be killed"
    killed_at = json.loads(next(runs.glob("*/ckpt/last/state.json")).read_text())["step"]
    assert 0 < killed_at < overrides["train.max_steps"]

    second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = json.loads(second.stdout.strip().splitlines()[-1])
    assert resumed["metrics"]["resumed_from"] == killed_at
    assert resumed["metrics"]["train_steps"] == overrides["train.max_steps"]

    fresh_env = {**env, "LMFORGE_ARTIFACTS": str(server["tmp"] / "uninterrupted-artifacts")}
    fresh = subprocess.run(cmd, env=fresh_env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    reference = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert reference["metrics"]["resumed_from"] == 0
    for key in ("val_loss", "best_val_loss", "final_train_loss"):
        assert resumed["metrics"][key] == reference["metrics"][key], key  # bitwise
    # the same registry: the uninterrupted run's weights, data and export are those of the resumed run's version
    assert reference["reused"] and reference["model_version"] == resumed["model_version"]


def test_prefect_config_set_persists_in_the_profile_until_unset(tmp_path):
    """README: `prefect config set PREFECT_API_URL=...` is saved in the profile ($PREFECT_HOME/profiles.toml),
    so a later `lmforge run` in another process needs that server (one line when it is down) until
    `prefect config unset PREFECT_API_URL`."""
    env = isolated_env(tmp_path, 0)
    down = f"http://127.0.0.1:{free_port()}/api"  # a server that has stopped
    prefect(env, "config", "set", f"PREFECT_API_URL={down}")
    assert f'PREFECT_API_URL = "{down}"' in (tmp_path / "prefect-home" / "profiles.toml").read_text()
    out = subprocess.run([sys.executable, "-m", "lmforge.cli", "run", "--set", "train.max_steps=1"], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"the Prefect API at {down} (PREFECT_API_URL) does not answer" in out.stderr
    assert "prefect config unset PREFECT_API_URL" in out.stderr
    assert "PREFECT_API_URL" in prefect(env, "config", "view").stdout
    prefect(env, "config", "unset", "PREFECT_API_URL")
    assert "PREFECT_API_URL" not in (tmp_path / "prefect-home" / "profiles.toml").read_text()
    assert "PREFECT_API_URL" not in prefect(env, "config", "view").stdout
