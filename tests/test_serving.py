"""Trying a registered version: the TINY pipeline registers jokes-char in a SQLite registry of its own, `champion`
is set, and `mlflow models serve -m models:/jokes-char@champion --env-manager local` (a real server on
127.0.0.1) answers JSON requests with the text lmforge.runtime.Generator makes from the same exported directory;
so does `mlflow.pyfunc.load_model` in-process (README "Try a version", docs/model-format.md "MLflow serving")."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, TINY, readme_commands
from test_deploy import free_port, stop, wait_http

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
URI = "models:/jokes-char@champion"
README = readme_commands("## Try a version")  # export MLFLOW_TRACKING_URI=..., mlflow models serve ... &, curl ...
PORT = "5001"  # README's port, replaced by a free one here
PROMPTS = ["Why", "A programmer"]


@pytest.fixture(scope="module")
def champion(prefect_server, tmp_path_factory):
    """(exported model directory, tracking URI): a TINY jokes-char run registered in a registry of its own and
    made champion through the registry API."""
    from lmforge.flows.pipeline import pipeline
    from lmforge.registry.tracking import client

    mp = pytest.MonkeyPatch()
    uri = f"sqlite:///{tmp_path_factory.mktemp('serving') / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        result = pipeline(preset="jokes-char", overrides=TINY)
        client().set_registered_model_alias("jokes-char", "champion", result["model_version"])
        yield Path(result["model_dir"]), uri
    finally:
        mp.undo()


def doc_commands() -> list[str]:
    """The bash block of docs/model-format.md's "MLflow serving: curl" section, as readme_commands reads README."""
    import re
    import shlex

    text = (REPO / "docs" / "model-format.md").read_text(encoding="utf-8").split("### MLflow serving: curl", 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.DOTALL).group(1)
    return [shlex.join(w) for w in (shlex.split(line, comments=True) for line in block.splitlines()) if w]


def command(line: str, port: int) -> list[str]:
    """A README command line as argv, with the test's port and without the trailing `&`."""
    import shlex

    words = [str(port) if w == PORT else w.replace(f":{PORT}/", f":{port}/") for w in shlex.split(line)]
    return words[:-1] if words[-1] == "&" else words


@pytest.fixture(scope="module")
def server(champion, tmp_path_factory):
    """README's `mlflow models serve` line for the champion, in a directory of its own, on a free port."""
    _, uri = champion
    port = free_port()
    tmp = tmp_path_factory.mktemp("serve")
    # as in a shell that ran `source .venv/bin/activate`: mlflow starts the server as `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(MLFLOW).parent}{os.pathsep}{os.environ['PATH']}"}
    argv = command(README[1], port)
    assert argv[:3] == ["mlflow", "models", "serve"] and URI in argv and "--env-manager" in argv
    with open(tmp / "serve.log", "w") as log:
        proc = subprocess.Popen([MLFLOW, *argv[1:]], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            try:
                wait_http(f"http://127.0.0.1:{port}/ping", proc, 180)
            except (RuntimeError, TimeoutError):
                log.flush()
                raise AssertionError((tmp / "serve.log").read_text()[-3000:]) from None
            yield f"http://127.0.0.1:{port}", port
        finally:
            stop(proc)


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_readme_and_doc_curl_answer_with_the_generators_text(champion, server):
    """README's curl line (docs/model-format.md has the same two commands) against the served champion."""
    from lmforge.runtime import Generator

    model_dir, _ = champion
    assert doc_commands() == README[1:]
    greedy = Generator(model_dir).generate("Why", max_new_tokens=20, temperature=0)
    out = subprocess.run(command(README[2], server[1]), capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout) == {"predictions": [greedy]}


def test_served_champion_answers_with_the_generators_text(champion, server):
    from lmforge.runtime import Generator

    server, _ = server

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

    server, _ = server

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
    unseeded = [post(server, {"dataframe_records": [{"prompt": PROMPTS[0]}],
                              "params": {"max_new_tokens": 40, "temperature": 1.5}})[1]["predictions"][0] for _ in range(2)]
    assert unseeded[0] != unseeded[1]  # no seed: fresh randomness per request


def test_served_bad_params_are_a_400_naming_the_parameter(server):
    server, _ = server
    status, out = post(server, {"dataframe_records": [{"prompt": "Why"}], "params": {"top_p": 2.0}})
    assert status == 400 and "top_p must be a number in (0, 1]" in out["message"]
    assert out["message"].count("(hint: ") == 1 and "top_p 0.9" in out["message"]  # the runtime's fix, once
    status, out = post(server, {"dataframe_records": [{"prompt": "Why"}], "params": {"max_new_tokens": "many"}})
    assert status == 400 and "max_new_tokens" in out["message"]


def test_served_requests_over_a_limit_are_a_400_naming_the_limit(server):
    """The serving limits live in lmforge.runtime, so `mlflow models serve` enforces them without code of its own."""
    server, _ = server
    for params, limit in (({"max_new_tokens": 10**7}, "limits.max_new_tokens"),
                          ({"stop": ["x"] * 17}, "limits.max_stop_strings"),
                          ({"stop": ["x" * 5000]}, "limits.max_stop_chars")):
        status, out = post(server, {"dataframe_records": [{"prompt": "Why"}], "params": params})
        assert status == 400 and limit in out["message"], (params, out)
    status, out = post(server, {"dataframe_records": [{"prompt": "Why " * 300_000}], "params": {"max_new_tokens": 5}})
    assert status == 400 and "limits.max_prompt_bytes" in out["message"]


def test_pyfunc_model_config_lowers_the_limits(champion):
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(URI, model_config={"limits": {"max_new_tokens": 8, "max_stop_strings": 1}})
    assert model.unwrap_python_model().generator.limits.max_new_tokens == 8
    with pytest.raises(MlflowException, match="limits.max_new_tokens"):
        model.predict(pd.DataFrame({"prompt": ["Why"]}), params={"max_new_tokens": 9})
    with pytest.raises(MlflowException, match="limits.max_stop_strings"):
        model.predict(pd.DataFrame({"prompt": ["Why"]}), params={"stop": ["a", "b"]})
    short = model.predict(pd.DataFrame({"prompt": ["Why"]}), params={"greedy": True})[0]  # default cut to 8 tokens
    assert 0 < len(short) <= 8  # jokes-char is a character model: a token is at most one character


def test_pyfunc_in_process_and_the_fetched_directory(champion, tmp_path):
    import mlflow
    import pandas as pd

    from lmforge.runtime import Generator
    from lmforge.registry.tracking import fetch_model_dir

    model_dir, _ = champion
    model = mlflow.pyfunc.load_model(URI)
    assert [p.name for p in model.metadata.signature.inputs.inputs] == ["prompt"]
    assert {p.name for p in model.metadata.signature.params.params} == {
        "max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "greedy", "stop"}
    assert {p.name: p.default for p in model.metadata.signature.params.params if p.default is not None} == {
        "repetition_penalty": 1.0, "greedy": False, "stop": []}
    served = model.unwrap_python_model().generator  # what `mlflow models serve` builds: Generator(dir) defaults
    assert Path(served.session._model_path).name == "model.fast.onnx"
    got = model.predict(pd.DataFrame({"prompt": PROMPTS}), params={"max_new_tokens": 20, "greedy": True})
    assert got == Generator(model_dir).generate(PROMPTS, max_new_tokens=20, temperature=0)
    # params left out: the model's lmforge.json `generation` defaults, as Generator uses them
    assert model.predict(pd.DataFrame({"prompt": PROMPTS[:1]}), params={"seed": 5}) == \
        [Generator(model_dir).generate(PROMPTS[0], seed=5)]
    int8 = mlflow.pyfunc.load_model(URI, model_config={"variant": "int8", "device": "cpu"})
    assert int8.unwrap_python_model().generator.provider == "CPUExecutionProvider"
    assert int8.predict(pd.DataFrame({"prompt": PROMPTS[:1]}), params={"max_new_tokens": 20, "greedy": True}) == \
        [Generator(model_dir, variant="int8").generate(PROMPTS[0], max_new_tokens=20, temperature=0)]

    fetched = fetch_model_dir(URI, tmp_path / "v")  # what `lmforge generate --model models:/...` and promote use
    digest = lambda d: {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in d.iterdir() if f.is_file()}
    assert digest(fetched) == digest(model_dir)  # the exported directory, every file as exported
    assert fetched == tmp_path / "v" / "artifacts" / "model"
    code = tmp_path / "v" / "code" / "lmforge" / "runtime" / "generator.py"  # the runtime travels with the version
    assert code.read_bytes() == (REPO / "lmforge" / "runtime" / "generator.py").read_bytes()
    copied = [f for f in (tmp_path / "v" / "code").rglob("*") if f.is_file()]
    assert not [f for f in copied if "node_modules" in f.parts or "web" in f.parts]  # not the browser page
    assert sum(f.stat().st_size for f in copied) < 5 << 20
    assert (tmp_path / "v" / "pyfunc_model.py").read_bytes() == (REPO / "lmforge" / "registry" / "pyfunc_model.py").read_bytes()
    from importlib.metadata import version

    reqs = (tmp_path / "v" / "requirements.txt").read_text().split()
    for dist in ("mlflow", "onnxruntime", "numpy", "tokenizers", "pandas"):
        assert f"{dist}=={version(dist)}" in reqs, (dist, reqs)


def test_a_fresh_process_decodes_with_the_versions_own_code(champion, tmp_path):
    """What `mlflow models serve` does in its process: load the version; the lmforge it runs is the copy stored in
    the version's code/, not the one installed beside mlflow."""
    _, uri = champion
    script = ("import json, sys, mlflow, pandas\n"
              f"m = mlflow.pyfunc.load_model({URI!r}, dst_path=sys.argv[1])\n"
              "out = m.predict(pandas.DataFrame({'prompt': ['Why']}), params={'max_new_tokens': 5, 'greedy': True})\n"
              "import lmforge.runtime.generator as g\n"
              "print(json.dumps([g.__file__, out]))\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300, check=True)
    where, texts = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(where) == tmp_path / "code" / "lmforge" / "runtime" / "generator.py" and len(texts) == 1


def test_directories_of_versions_registered_before_are_still_found(champion, tmp_path):
    """A version registered as an `mlflow.onnx` model kept the directory's files at its root: found there."""
    from lmforge.registry.pyfunc import model_dir_in

    model_dir, _ = champion
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    (old / "MLmodel").write_text("flavors:\n  onnx: {data: model.onnx}\n")
    assert model_dir_in(old) == old


def test_pyfunc_predict_stream_yields_predicts_text_piece_by_piece(champion):
    """mlflow.pyfunc users stream in-process: the registered version's predict_stream (lmforge.registry.pyfunc)."""
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from lmforge.runtime import Generator

    model_dir, _ = champion
    model = mlflow.pyfunc.load_model(URI)
    params = {"max_new_tokens": 30, "greedy": True}
    pieces = list(model.predict_stream({"prompt": "Why"}, params=params))
    assert len(pieces) > 1 and all(isinstance(p, str) and p for p in pieces)
    whole = model.predict(pd.DataFrame({"prompt": ["Why"]}), params=params)[0]
    assert "".join(pieces) == whole == Generator(model_dir).generate("Why", max_new_tokens=30, temperature=0)
    seeded = {"max_new_tokens": 20, "temperature": 1.0, "seed": 3}
    assert "".join(model.predict_stream({"prompt": "Why"}, params=seeded)) == \
        Generator(model_dir).generate("Why", **seeded)
    with pytest.raises(MlflowException, match="temperature"):  # refused before any text
        next(iter(model.predict_stream({"prompt": "Why"}, params={"temperature": -1.0})))


def test_serve_model_resolves_a_registry_uri_once_at_start(champion, tmp_path):
    """`lmforge serve-model models:/jokes-char@champion`: the version's directory, fetched at start, answers the
    openai client with the Generator's text."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("litserve")
    from test_serve_model import ready, start

    from lmforge.runtime import Generator

    model_dir, uri = champion
    proc, url, log = start(URI, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, cwd=tmp_path)
    try:
        ready(proc, url, log)
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        about = c.models.list().data[0]
        assert about.id == "jokes-char" and about.lmforge["source"] == URI
        got = c.completions.create(model="jokes-char", prompt="Why", max_tokens=20, temperature=0)
        assert got.choices[0].text == Generator(model_dir).generate("Why", max_new_tokens=20, temperature=0)
    finally:
        stop(proc)
