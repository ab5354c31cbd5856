"""Trying a registered version: the TINY pipeline registers jokes-char in a SQLite registry of its own, `champion`
is set, and `mlflow models serve -m models:/jokes-char@champion --env-manager local` (a real server on
127.0.0.1) answers JSON requests with the text lmforge.runtime.Generator makes from the same exported directory;
so does `mlflow.pyfunc.load_model` in-process (README "Try a version", docs/model-format.md "MLflow serving")."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, TINY
from test_deploy import free_port, stop, wait_http

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
URI = "models:/jokes-char@champion"
PROMPTS = ["Why", "A programmer"]


@pytest.fixture(scope="module")
def champion(prefect_server, tmp_path_factory):
    """(exported model directory, tracking URI): a TINY jokes-char run registered in a registry of its own and
    made champion through the registry API."""
    from flows.pipeline import pipeline
    from lmforge.tracking import client

    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{tmp_path_factory.mktemp('serving') / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        result = pipeline(preset="jokes-char", overrides=TINY)
        client().set_registered_model_alias("jokes-char", "champion", result["model_version"])
        yield Path(result["model_dir"]), uri
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def server(champion, tmp_path_factory):
    """`mlflow models serve` of the champion, started the way README.md says, in a directory of its own."""
    _, uri = champion
    port = free_port()
    tmp = tmp_path_factory.mktemp("serve")
    log = open(tmp / "serve.log", "w")
    # as in a shell that ran `source .venv/bin/activate`: mlflow starts the server as `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(MLFLOW).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([MLFLOW, "models", "serve", "-m", URI, "--env-manager", "local",
                             "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", proc, 180)
        except (RuntimeError, TimeoutError):
            log.flush()
            raise AssertionError((tmp / "serve.log").read_text()[-3000:]) from None
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_served_champion_answers_with_the_generators_text(champion, server):
    from lmforge.runtime import Generator

    model_dir, _ = champion
    gen = Generator(model_dir)
    greedy = gen.generate(PROMPTS[0], max_new_tokens=20, temperature=0)
    assert len(greedy) >= 10  # a real continuation, not an empty answer that would equal anything empty
    status, out = post(server, {"dataframe_records": [{"prompt": PROMPTS[0]}],
                                "params": {"max_new_tokens": 20, "greedy": True}})
    assert status == 200 and out == {"predictions": [greedy]}
    # several prompts at once: the batch the Generator decodes for the same list
    status, out = post(server, {"dataframe_records": [{"prompt": p} for p in PROMPTS],
                                "params": {"max_new_tokens": 20, "greedy": True}})
    assert status == 200 and out["predictions"] == gen.generate(PROMPTS, max_new_tokens=20, temperature=0)


def test_served_sampling_params_reach_the_generator(champion, server):
    from lmforge.runtime import Generator

    model_dir, _ = champion
    gen = Generator(model_dir)
    params = {"max_new_tokens": 24, "temperature": 1.3, "top_k": 8, "top_p": 0.9, "seed": 7}
    expected = gen.generate(PROMPTS[0], **params)
    assert expected != gen.generate(PROMPTS[0], **{**params, "seed": 8})  # the seed matters here
    status, out = post(server, {"dataframe_split": {"columns": ["prompt"], "data": [[PROMPTS[0]]]}, "params": params})
    assert status == 200 and out["predictions"] == [expected]
    greedy = gen.generate(PROMPTS[0], max_new_tokens=20, temperature=0)
    stop_at = greedy[3:5]
    status, out = post(server, {"inputs": {"prompt": [PROMPTS[0]]},
                                "params": {"max_new_tokens": 20, "greedy": True, "stop": [stop_at]}})
    assert status == 200 and out["predictions"] == [greedy[:greedy.index(stop_at)]]


def test_served_bad_params_are_a_400_naming_the_parameter(server):
    status, out = post(server, {"dataframe_records": [{"prompt": "Why"}], "params": {"top_p": 2.0}})
    assert status == 400 and "top_p must be a number in (0, 1]" in out["message"]
    status, out = post(server, {"dataframe_records": [{"prompt": "Why"}], "params": {"max_new_tokens": "many"}})
    assert status == 400 and "max_new_tokens" in out["message"]


def test_pyfunc_in_process_and_the_fetched_directory(champion, tmp_path):
    import mlflow
    import pandas as pd

    from lmforge.runtime import Generator
    from lmforge.tracking import fetch_model_dir

    model_dir, _ = champion
    model = mlflow.pyfunc.load_model(URI)
    assert [p.name for p in model.metadata.signature.inputs.inputs] == ["prompt"]
    assert {p.name for p in model.metadata.signature.params.params} == {
        "max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "greedy", "stop"}
    got = model.predict(pd.DataFrame({"prompt": PROMPTS}), params={"max_new_tokens": 20, "greedy": True})
    assert got == Generator(model_dir).generate(PROMPTS, max_new_tokens=20, temperature=0)
    int8 = mlflow.pyfunc.load_model(URI, model_config={"variant": "int8"})
    assert int8.predict(pd.DataFrame({"prompt": PROMPTS[:1]}), params={"max_new_tokens": 20, "greedy": True}) == \
        [Generator(model_dir, variant="int8").generate(PROMPTS[0], max_new_tokens=20, temperature=0)]

    fetched = fetch_model_dir(URI, tmp_path / "v")  # what `lmforge generate --model models:/...` and promote use
    digest = lambda d: {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in d.iterdir() if f.is_file()}  # noqa: E731
    assert digest(fetched) == digest(model_dir)  # the exported directory, every file as exported
    code = tmp_path / "v" / "code" / "lmforge" / "runtime" / "generator.py"  # the runtime travels with the version
    assert code.read_bytes() == (REPO / "lmforge" / "runtime" / "generator.py").read_bytes()
