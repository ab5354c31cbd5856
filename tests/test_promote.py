"""Promotion on real parts: two TINY runs registered in an MLflow SQLite registry, compared through
onnxruntime on the candidate's val shard; `champion` moves only when the candidate wins (or with --force)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, TINY

from lmforge.core.config import ExportConfig

WEAK = {**TINY, "train.max_steps": 4, "train.eval_interval": 4}  # barely trained: clearly worse
STRONG = {**TINY, "train.max_steps": 200, "train.eval_interval": 100, "train.lr": 3e-3}  # ~0.4 below unigram


@pytest.fixture(scope="module")
def registry(prefect_server, tmp_path_factory):
    """An MLflow registry of its own, so other modules' jokes-char versions do not interfere."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('promote') / 'mlflow.db'}")
    yield
    mp.undo()


def run(overrides: dict) -> dict:
    from lmforge.flows.pipeline import pipeline

    return pipeline(preset="jokes-char", overrides=overrides)


def aliases() -> dict:
    from lmforge.registry.tracking import client

    return {k: str(v) for k, v in client().get_registered_model("jokes-char").aliases.items()}


def cli(*args: str) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the session's server, not a temporary one
    return subprocess.run([sys.executable, "-m", "lmforge.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=180, env=env)


@pytest.fixture(scope="module")
def versions(registry):
    """A well trained run, then a barely trained one (the README's order once: a full run, then a smoke run)."""
    return {"strong": run(STRONG), "weak": run(WEAK)}


def test_a_smoke_run_is_not_made_the_first_champion(versions):
    from lmforge.flows.promote import promote
    from lmforge.registry.tracking import client

    assert aliases() == {"candidate": versions["weak"]["model_version"]}
    assert "promotion" not in versions["weak"]  # a run outside the deployments: promote.auto is off
    first = promote(name="jokes-char")
    assert first["decision"] == "kept" and first["champion_version"] is None
    assert first["candidate_loss"] > first["unigram_entropy"] - first["gate"]  # it does not clear the gate
    assert "gate" in first["reason"] and "champion" not in aliases()
    assert client().get_model_version("jokes-char", versions["weak"]["model_version"]).tags[
        "promotion_decision"] == "kept"
    chosen = promote(name="jokes-char", version=versions["strong"]["model_version"], gate=0.2)
    assert chosen["decision"] == "promoted", (chosen["candidate_loss"], chosen["unigram_entropy"], chosen["reason"])
    assert chosen["candidate_loss"] < chosen["unigram_entropy"] - 0.2
    assert aliases()["champion"] == versions["strong"]["model_version"]


def test_champion_moves_only_when_the_candidate_wins_and_every_move_is_recorded(versions):
    from lmforge.flows.promote import promote
    from lmforge.registry.tracking import client

    strong, weak = versions["strong"]["model_version"], versions["weak"]["model_version"]
    lost = promote(name="jokes-char", margin=0.01)  # candidate is the weak run
    assert lost["decision"] == "kept" and lost["candidate_loss"] > lost["champion_loss"]
    assert "same data" in lost["scored_on"]
    assert aliases() == {"candidate": weak, "champion": strong}

    forced = cli("promote", "jokes-char", "--force", "--by", "alice", "--json")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert json.loads(forced.stdout.strip().splitlines()[-1])["decision"] == "promoted"
    assert aliases()["champion"] == weak
    tags = client().get_model_version("jokes-char", weak).tags
    assert tags["promotion_by"] == "alice" and tags["promotion_previous_champion"] == strong
    assert float(tags["promotion_champion_loss"]) < float(tags["promotion_candidate_loss"])
    assert tags["promotion_at"][:4].isdigit()

    back = cli("rollback", "jokes-char", "--by", "bob", "--json")
    assert back.returncode == 0, back.stderr[-2000:]
    assert aliases()["champion"] == strong
    assert client().get_model_version("jokes-char", strong).tags["rollback_from"] == weak
    assert client().get_model_version("jokes-char", weak).tags["rolled_back_to"] == strong
    again = cli("rollback", "jokes-char")  # strong was the first champion: nothing earlier to put back
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "first champion" in again.stderr


def test_a_champion_that_moved_meanwhile_is_not_overwritten(versions):
    from lmforge.core.errors import LmforgeError
    from lmforge.registry.promote import move_champion

    strong, weak = versions["strong"]["model_version"], versions["weak"]["model_version"]
    assert aliases()["champion"] == strong
    with pytest.raises(LmforgeError, match=f"champion moved to v{strong}"):
        move_champion("jokes-char", expected=weak, to=weak)  # compared against weak, but strong is champion now
    assert aliases()["champion"] == strong


def test_held_out_split_rules():
    from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

    from lmforge.registry.promote import held_out_for_both

    def version(v: int, **tags) -> ModelVersion:
        base = {"data_fingerprint": f"fp{v}", "corpus_sha256": f"corpus{v}", "split": "documents",
                "split_seed": "1337", "split_val_fraction": "0.1", "split_val_filter": "none"}
        return ModelVersion("m", str(v), 0, tags=[ModelVersionTag(k, v) for k, v in {**base, **tags}.items()])

    assert held_out_for_both(version(2, data_fingerprint="same"), version(1, data_fingerprint="same"))[0]
    fair, why = held_out_for_both(version(2), version(1))  # new corpus, the same document split rule
    assert fair and "depends only on its text" in why
    assert not held_out_for_both(version(2, split_seed="7"), version(1))[0]
    assert not held_out_for_both(version(2, split="contiguous"), version(1, split="contiguous"))[0]
    assert not held_out_for_both(version(2), ModelVersion("m", "1", 0, tags={}))[0]  # registered before fingerprints


def test_an_unchanged_rerun_registers_no_new_version(versions):
    from lmforge.registry.tracking import client

    again = run(STRONG)
    assert again["reused"] is True and again["model_version"] == versions["strong"]["model_version"]
    assert again["metrics"]["resumed_from"] == STRONG["train.max_steps"]  # nothing retrained
    assert len(client().search_model_versions("name='jokes-char'")) == 2
    assert aliases()["candidate"] == versions["strong"]["model_version"]


def test_registered_version_is_reviewable(registry):
    """Tags a reviewer needs, and the generate model logged with a signature and an input example."""
    import mlflow

    from lmforge.registry.tracking import client

    mv = client().get_model_version_by_alias("jokes-char", "candidate")
    for tag in ("data_source", "corpus_sha256", "data_fingerprint", "tokenizer_sha256", "split", "val_sha256",
                "weights_sha256", "preset", "git_commit", "val_loss", "onnx_parity_max_abs", "onnx_fp32_bytes",
                "int8_val_loss_delta", "data_dir"):
        assert mv.tags.get(tag), tag
    e = ExportConfig()  # the bounds the export enforced, through the runtime, on the graph int8 runs by default
    assert abs(float(mv.tags["int8_val_loss_delta"])) <= e.max_int8_loss_delta
    assert float(mv.tags["verify_fast_int8_loss_delta"]) <= e.max_int8_loss_delta
    assert float(mv.tags["verify_fast_int8_agreement"]) >= e.min_int8_agreement
    assert float(mv.tags["verify_fast_logit_max_abs"]) <= e.max_abs_logit_diff
    info = mlflow.models.get_model_info(f"models:/jokes-char/{mv.version}")  # the generate model (lmforge.registry.pyfunc)
    assert [s.name for s in info.signature.inputs.inputs] == ["prompt"]
    assert "max_new_tokens" in {p.name for p in info.signature.params.params}
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
