"""A real `mlflow server` (SQLite backend, proxied artifact store): the TINY pipeline registers through it, the
promotion flow names a champion, and the champion is served back by alias. With no server answering, the flow
fails at its first task with a clear message and trains nothing."""
from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import TINY
from test_deploy import free_port, stop, wait_http

from lmforge.web.browser import Chromium, find_chromium

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, 90)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


def test_pipeline_and_promotion_through_the_server(prefect_server, mlflow_server, monkeypatch, tmp_path):
    from lmforge.flows.pipeline import pipeline
    from lmforge.flows.promote import promote
    from lmforge.runtime import Generator
    from lmforge.registry.tracking import client, fetch_model_dir

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    result = pipeline(preset="jokes-char", overrides=TINY)
    c = client()
    assert c.get_run(result["run_id"]).info.artifact_uri.startswith("mlflow-artifacts:")  # stored by the server
    decision = promote(name="jokes-char", force=True)  # a 30-step model: past the first-champion gate by force
    assert decision["decision"] == "promoted" and decision["candidate_version"] == result["model_version"]
    assert str(c.get_model_version_by_alias("jokes-char", "champion").version) == result["model_version"]
    model_dir = fetch_model_dir("models:/jokes-char@champion", tmp_path / "champion")
    assert Generator(model_dir).generate("Why", max_new_tokens=8, temperature=0) != ""
    # the model card's loss curve: a markdown image whose link the server's UI answers from the run's artifacts
    card = c.get_model_version("jokes-char", result["model_version"]).description
    link = re.search(r"!\[loss curve[^\]]*\]\((get-artifact\?[^)]+)\)", card).group(1)
    assert f"run_uuid={result['run_id']}" in link
    with urllib.request.urlopen(f"{mlflow_server}/{link}", timeout=30) as resp:
        assert resp.read(8) == b"\x89PNG\r\n\x1a\n"
    if find_chromium():  # and the UI's version page shows it (CI has chromium; the test says so when skipped)
        assert loss_image_width(mlflow_server, result["model_version"]) > 0


def test_server_down_fails_first_with_a_clear_message(prefect_server, monkeypatch):
    from lmforge.flows.pipeline import pipeline
    from lmforge.core.config import load_config
    from lmforge.core.errors import LmforgeError
    from lmforge.core.layout import RunLayout

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    overrides = {**TINY, "train.seed": 9091, "data.seed": 9091}  # data and run directories of its own
    with pytest.raises(LmforgeError, match=f"MLflow tracking server {down} is unreachable"):
        pipeline(preset="jokes-char", overrides=overrides)
    layout = RunLayout.for_config(load_config("jokes-char", overrides))
    assert layout.run_dirs() == [] and not layout.prepared.exists()  # it stopped before any work


def loss_image_width(server: str, version: str, timeout: float = 90) -> int:
    """The rendered width of the card's loss curve on the MLflow UI's version page, in a headless Chromium."""
    with Chromium() as browser:
        page = browser.open(f"{server}/#/models/jokes-char/versions/{version}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            width = page.evaluate("(() => { const i = [...document.images].find(i => i.src.includes("  # alt is sanitized
                                  "'get-artifact?path=plots%2Floss.png')); return i && i.complete ? i.naturalWidth : 0 })()")
            if width:
                return int(width)
            time.sleep(1)
    return 0
