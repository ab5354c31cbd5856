"""Run identity on real parts (Prefect test server, MLflow SQLite registry, onnxruntime): a changed corpus under
the same path trains from step 0 in a directory of its own and registers its own data fingerprint, while the
earlier version keeps the tokenizer it was trained with; a change that does not touch the weights re-uses the
checkpoint; every registered model directory holds the tokenizer of the data its weights were trained on."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pyjokes
import pytest

from conftest import TINY, LogLines


@pytest.fixture(scope="module")
def registry(prefect_server, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('identity') / 'mlflow.db'}")
    yield
    mp.undo()


def run(overrides: dict) -> dict:
    from lmforge.flows.pipeline import pipeline

    return pipeline(preset="jokes-char", overrides=overrides)


def registered_dir(version: str, tmp: Path) -> Path:
    from lmforge.registry.tracking import fetch_model_dir

    return fetch_model_dir(f"models:/nightly/{version}", tmp / f"v{version}")


def test_changed_data_under_the_same_path_trains_again_and_registers_its_fingerprint(registry, tmp_path):
    from lmforge.registry.tracking import client

    jokes = pyjokes.get_jokes(language="en", category="all")
    source = tmp_path / "jokes.txt"
    source.write_text("\n".join(jokes[:200]) + "\n", encoding="utf-8")
    overrides = {**TINY, "name": "nightly", "data.source": str(source), "data.format": "lines"}
    first = run(overrides)
    source.write_text("\n".join(j.upper() for j in jokes[100:]) + "\n", encoding="utf-8")  # same path, new text
    lines = LogLines()
    logging.getLogger("prefect").addHandler(lines)
    try:
        second = run(overrides)
    finally:
        logging.getLogger("prefect").removeHandler(lines)

    assert second["data_fingerprint"] != first["data_fingerprint"] and second["run_dir"] != first["run_dir"]
    assert second["metrics"]["resumed_from"] == 0 and second["metrics"]["train_steps"] == TINY["train.max_steps"]
    assert second["model_version"] != first["model_version"] and not second["reused"]
    assert any(m.startswith("the data changed since the last run of this config") for m in lines.messages)
    c = client()
    for result in (first, second):
        mv = c.get_model_version("nightly", result["model_version"])
        data = Path(result["run_dir"]) / "data"
        meta = json.loads((data / "meta.json").read_text())
        assert mv.tags["data_fingerprint"] == result["data_fingerprint"] == meta["data_fingerprint"]
        model = registered_dir(result["model_version"], tmp_path)
        # the registered tokenizer is the one its weights were trained with, even for the first version, whose
        # prepared directory has since been re-made for the new text
        assert (model / "tokenizer.json").read_bytes() == (data / "tokenizer.json").read_bytes()
        assert json.loads((model / "lmforge.json").read_text())["data"]["fingerprint"] == result["data_fingerprint"]
    # the README's "What a run leaves where": runs/<preset>-<weights hash>-<data fingerprint>/{data,ckpt,model}
    for result in (first, second):
        run_dir = Path(result["run_dir"])
        assert re.fullmatch(r"nightly-[0-9a-f]{10}-" + result["data_fingerprint"][:10], run_dir.name)
        assert run_dir.parent.name == "runs" and Path(result["model_dir"]) == run_dir / "model"
        assert {p.name for p in run_dir.iterdir()} >= {"data", "ckpt", "model"}
        assert {p.name for p in (run_dir / "ckpt").iterdir()} >= {"last", "best"}
        assert sorted(p.name for p in (run_dir / "data").iterdir()) == ["meta.json", "tokenizer.json", "train.bin",
                                                                        "val.bin", "val.jsonl"]
    prepared = sorted(p.name for p in (Path(first["run_dir"]).parents[1] / "prepared").glob("nightly-*") if p.is_dir())
    assert len(prepared) == 1 and re.fullmatch(r"nightly-[0-9a-f]{10}", prepared[0])
    first_tok = (Path(first["run_dir"]) / "data" / "tokenizer.json").read_bytes()
    assert first_tok != (Path(second["run_dir"]) / "data" / "tokenizer.json").read_bytes()  # upper case: new vocab

    # export.* and eval.* do not touch the weights: same run directory, no training, a re-export
    again = run({**overrides, "export.int8": "false", "eval.max_new_tokens": 5})
    assert again["run_dir"] == second["run_dir"] and again["metrics"]["resumed_from"] == TINY["train.max_steps"]
    assert not (Path(again["model_dir"]) / "model.int8.onnx").exists()
    assert again["model_version"] not in (first["model_version"], second["model_version"])  # other export settings
    assert not again["reused"]


def test_a_checkpoint_of_other_data_is_set_aside_not_resumed(tmp_path):
    """Defence in depth: a checkpoint copied into a run directory it does not belong to is never resumed."""
    import numpy as np
    import torch

    from lmforge.training.checkpoint import Checkpoints, Identity
    from lmforge.core.config import ModelConfig, TrainConfig
    from lmforge.models import build_model
    from lmforge.training.train import Hooks, train

    data = (np.arange(4000) % 17).astype(np.uint16)
    cfg = TrainConfig(max_steps=6, batch_size=4, eval_interval=3, eval_iters=1, warmup_steps=1, device="cpu")
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), 17)
    train(model, data[:3000], data[3000:], 16, cfg, tmp_path / "ckpt", identity=Identity("w", "old-data"))
    notes = []
    result = train(model, data[:3000], data[3000:], 16, cfg, tmp_path / "ckpt", hooks=Hooks(note=notes.append),
                   identity=Identity("w", "new-data"))
    assert result.resumed_from == 0 and result.steps == 6
    assert "trained on other data or another config" in notes[0]
    assert Checkpoints(tmp_path / "ckpt").state("last")["identity"] == {"weights": "w", "data": "new-data"}
    assert len(list((tmp_path / "ckpt").glob(".set-aside-*"))) == 1
