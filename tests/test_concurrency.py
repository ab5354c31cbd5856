"""Two processes at once, on real parts: two `lmforge run` of one config started together both finish (each
waits for the holder of the data directory, saying for whom; one trains, the other re-uses its training), and the
registered model matches its data;
with --no-wait the second stops with one line; two first registrations of one new name against a real
`mlflow server` both get their versions; a user error raised inside a flow reaches the terminal as one line."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tokenizers import Tokenizer

from lmforge.core.config import load_config
from lmforge.core.layout import RunLayout
from lmforge.core.locks import hold

from conftest import REPO, TINY
from test_mlflow_server import mlflow_server  # noqa: F401 (fixture)
from test_terminal import Stderr, env_for, lmforge, run_args


def start(env: dict, overrides: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(lmforge(*run_args(overrides), *extra), env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[err.find("Traceback"):][:4000] + "\n...\n" + err[-1500:]
    return json.loads(out.strip().splitlines()[-1]), err


def collect(proc: subprocess.Popen, err: Stderr) -> dict:
    out = proc.stdout.read()
    proc.wait(timeout=600)
    err.join(timeout=60)
    text = "\n".join(err.lines)
    assert proc.returncode == 0, text[text.find("Traceback"):][:4000] + "\n...\n" + text[-1500:]
    return json.loads(out.strip().splitlines()[-1])


def test_two_runs_of_one_config_started_together_both_finish(tmp_path, monkeypatch):
    import mlflow

    from lmforge.registry.tracking import fetch_model_dir

    env = env_for(tmp_path)
    monkeypatch.setenv("LMFORGE_ARTIFACTS", env["LMFORGE_ARTIFACTS"])
    layout = RunLayout.for_config(load_config("jokes-char", [f"{k}={v}" for k, v in TINY.items()]))
    # The test holds the config's data directory, so the two runs really overlap: started "together", one could
    # otherwise finish before the other's start-up (its own Prefect server) reached a lock at all.
    with hold(layout.prepared_lock, "the prepared data"):
        procs = [start(env, TINY), start(env, TINY)]
        errs = [Stderr(p) for p in procs]
        for err in errs:  # each queued behind the holder and said for whom
            err.wait_for(rf"waiting for pid {os.getpid()} on .* which holds the prepared data of jokes-char")
    a, b = (collect(p, e) for p, e in zip(procs, errs))
    assert a["run_dir"] == b["run_dir"] and a["model_version"] == b["model_version"] == "1"
    assert sorted([a["reused"], b["reused"]]) == [False, True]  # one registered, the other found it identical
    later = a if a["reused"] else b
    assert later["metrics"]["resumed_from"] == TINY["train.max_steps"]  # it re-used the first one's training

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    mv = client.get_model_version("jokes-char", "1")
    data = Path(a["run_dir"]) / "data"
    assert mv.tags["data_fingerprint"] == json.loads((data / "meta.json").read_text())["data_fingerprint"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    model = fetch_model_dir("models:/jokes-char/1", tmp_path / "v1")
    # the export writes the tokenizer in the form every consumer reads (docs/model-format.md): compare what it encodes
    exported, trained = (Tokenizer.from_file(str(d / "tokenizer.json")) for d in (model, data))
    text = json.loads((data / "val.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert exported.encode(text, add_special_tokens=False).ids == trained.encode(text, add_special_tokens=False).ids
    leftovers = [p for p in Path(env["LMFORGE_ARTIFACTS"]).rglob("*") if ".tmp" in p.name or p.name.endswith(".holder")]
    assert leftovers == []  # no temp files, no lock notes left behind


def test_no_wait_stops_with_one_line_while_another_run_holds_the_directory(tmp_path):
    env = env_for(tmp_path)
    # far more steps than it will run (it is interrupted once the second run answers): on a loaded machine the
    # second run's start-up must not outlast the holder's training
    slow = {**TINY, "train.max_steps": 5000, "train.eval_interval": 1000}
    holder = start(env, slow)
    artifacts = Path(env["LMFORGE_ARTIFACTS"])
    deadline = time.monotonic() + 240
    while not list(artifacts.glob("runs/*.lock.holder")):  # the first run is training
        assert holder.poll() is None and time.monotonic() < deadline, holder.communicate()[1][-3000:]
        time.sleep(0.05)
    try:
        out = subprocess.run(lmforge(*run_args(slow), "--no-wait"), env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    finally:
        os.killpg(holder.pid, 2)
        holder.communicate(timeout=120)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the run directory ") and "is in use by pid" in last and "--no-wait" in last
    assert "Traceback" not in out.stderr


def test_two_first_registrations_of_one_name_both_get_versions(tmp_path, mlflow_server):  # noqa: F811
    import mlflow

    env = {**env_for(tmp_path), "MLFLOW_TRACKING_URI": mlflow_server}
    name = "race"
    runs = [start(env, {**TINY, "name": name, "train.seed": seed}) for seed in (1, 2)]  # different weights
    results = [finish(p)[0] for p in runs]
    assert sorted(r["model_version"] for r in results) == ["1", "2"] and not any(r["reused"] for r in results)
    client = mlflow.MlflowClient(mlflow_server)
    assert {v.run_id for v in client.search_model_versions(f"name='{name}'")} == {r["run_id"] for r in results}


def test_a_user_error_inside_a_flow_is_one_line_without_traceback(tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("ab\ncd\nef\n")
    out = subprocess.run(lmforge("run", "--set", f"data.source={tiny}", "--set", "train.max_steps=5"),
                         env=env_for(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: the corpus has ") and "(hint: " in lines[-1]
    assert "Traceback" not in out.stderr and "LmforgeError" not in out.stderr
    assert sum("fewer than one context window" in ln for ln in lines) == 1  # said once, by lmforge


