"""Promotion on real parts: two TINY runs registered in an MLflow SQLite registry, compared through
onnxruntime on the candidate's val shard; `champion` moves only when the candidate wins (or with --force)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY

WEAK = {**TINY, "train.max_steps": 4, "train.eval_interval": 4}  # barely trained: clearly worse
STRONG = {**TINY, "train.max_steps": 90, "train.eval_interval": 45}


@pytest.fixture(scope="module")
def registry(prefect_server, tmp_path_factory):
    """An MLflow registry of its own, so other modules' jokes-char versions do not interfere."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('promote') / 'mlflow.db'}")
    yield
    mp.undo()


def run(overrides: dict) -> dict:
    from flows.pipeline import pipeline

    return pipeline(preset="jokes-char", overrides=overrides)


def aliases() -> dict:
    from lmforge.tracking import client

    return {k: str(v) for k, v in client().get_registered_model("jokes-char").aliases.items()}


def test_promotion_moves_champion_only_when_candidate_wins(registry):
    from flows.promote import promote
    from lmforge.tracking import client

    weak = run(WEAK)
    first = promote(name="jokes-char")
    assert first["decision"] == "promoted" and first["champion_version"] is None
    assert aliases()["champion"] == weak["model_version"]

    strong = run(STRONG)
    won = promote(name="jokes-char", margin=0.01)
    assert won["decision"] == "promoted", won
    assert won["candidate_loss"] < won["champion_loss"] - 0.01
    assert aliases()["champion"] == strong["model_version"]
    mv = client().get_model_version("jokes-char", strong["model_version"])
    assert mv.tags["promotion_decision"] == "promoted"
    assert float(mv.tags["promotion_champion_loss"]) == pytest.approx(won["champion_loss"], abs=1e-4)
    assert "Promotion of jokes-char" in mv.description

    # the other direction: offer the weak version again as the candidate (as a worse new run would be)
    client().set_registered_model_alias("jokes-char", "candidate", weak["model_version"])
    lost = promote(name="jokes-char", margin=0.01)
    assert lost["decision"] == "kept" and lost["candidate_loss"] > lost["champion_loss"]
    assert aliases() == {"candidate": weak["model_version"], "champion": strong["model_version"]}
    assert client().get_model_version("jokes-char", weak["model_version"]).tags["promotion_decision"] == "kept"

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the session's server, not a temporary one
    forced = subprocess.run([sys.executable, "-m", "lmforge.cli", "promote", "jokes-char", "--force", "--json"],
                            capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert json.loads(forced.stdout.strip().splitlines()[-1])["decision"] == "promoted"
    assert aliases()["champion"] == weak["model_version"]


def test_registered_version_is_reviewable(registry):
    """Tags a reviewer needs, and the ONNX model logged with a signature and an input example."""
    import mlflow

    from lmforge.tracking import client

    mv = client().get_model_version_by_alias("jokes-char", "candidate")
    for tag in ("data_source", "corpus_sha256", "preset", "git_commit", "val_loss", "onnx_parity_max_abs",
                "onnx_fp32_bytes", "int8_val_loss_delta", "prepared_dir"):
        assert mv.tags.get(tag), tag
    assert abs(float(mv.tags["int8_val_loss_delta"])) < 0.5
    info = mlflow.models.get_model_info(f"models:/jokes-char/{mv.version}")
    inputs = {s.name: s.shape for s in info.signature.inputs.inputs}
    assert inputs["input_ids"] == (-1, -1)
    assert info.saved_input_example_info is not None


def test_runs_and_promotions_publish_prefect_artifacts(registry):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    def artifact(key: str):
        with get_client(sync_client=True) as prefect:
            return prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))[0]

    summary = artifact("run-jokes-char")
    assert summary.type == "markdown" and "MLflow run" in summary.data and "val_loss" in summary.data
    comparison = artifact("promotion-jokes-char")
    assert comparison.type == "markdown" and "| candidate |" in comparison.data


def test_promote_without_candidate_is_a_clear_error(registry):
    out = subprocess.run([sys.executable, "-m", "lmforge.cli", "promote", "no-such-model"], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2
    assert "no `candidate` version" in out.stderr and "hint:" in out.stderr
