"""Warm starts and training longer (docs/scheduling.md "Warm starts and training longer"), on real parts (the
Prefect test server, an MLflow SQLite registry, the pipeline flow and the `lmforge` command in-process):
night 2, on a corpus with more text, warm-starts from night 1's champion and reaches a lower val loss in fewer
steps, recording its parent; a tokenizer of another kind is refused in one line; `--continue` to a larger
max_steps goes on from the finished step in a run directory of its own; and with a learning rate that does not
depend on max_steps a continued run is bitwise the fresh run of that length."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pyjokes
import pytest
import torch

from conftest import TINY
from lmforge.cli import main


@pytest.fixture(scope="module")
def registry(prefect_server, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('warm') / 'mlflow.db'}")
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def restore_log_streams():
    """Log handlers set up while capsys captured (main() configures logging) point back at stderr after."""
    yield
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for handler in (h for lg in loggers for h in lg.handlers):
        if getattr(getattr(handler, "stream", None), "closed", False):
            handler.stream = sys.stderr
            if hasattr(handler, "console"):
                handler.console.file = sys.stderr


def run(overrides: dict) -> dict:
    from lmforge.flows.pipeline import pipeline

    return pipeline(preset="jokes-char", overrides=overrides)


def cli_args(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]


def run_tags(run_id: str) -> dict:
    from lmforge.registry.tracking import client

    return client().get_run(run_id).data.tags


JOKES = pyjokes.get_jokes(language="en", category="all")


@pytest.fixture(scope="module")
def night1(registry, tmp_path_factory):
    """Night 1: 150 jokes, trained from scratch, made champion."""
    from lmforge.registry.tracking import client

    source = tmp_path_factory.mktemp("nightly") / "jokes.txt"
    source.write_text("\n".join(JOKES[:150]) + "\n", encoding="utf-8")
    nightly = {**TINY, "name": "warmnight", "data.source": str(source), "data.format": "lines",
               "train.max_steps": 80, "train.eval_interval": 40}
    result = run(nightly)
    client().set_registered_model_alias("warmnight", "champion", result["model_version"])
    return nightly, source, result


def test_night_2_warm_starts_from_the_champion_and_beats_night_1_in_fewer_steps(night1):
    nightly, source, first = night1
    source.write_text("\n".join(JOKES) + "\n", encoding="utf-8")  # the corpus grew
    night2 = {**nightly, "train.max_steps": 40, "train.eval_interval": 20}
    warm = run({**night2, "train.init_from": "champion"})
    fresh = run(night2)  # the same night without a warm start

    assert warm["metrics"]["train_steps"] == 40 < first["metrics"]["train_steps"]
    assert warm["metrics"]["val_loss"] < first["metrics"]["val_loss"]
    assert warm["metrics"]["val_loss"] < fresh["metrics"]["val_loss"] - 0.05  # the parent's weights did the work
    assert warm["data_fingerprint"] != first["data_fingerprint"] and warm["run_dir"] != fresh["run_dir"]
    tags = run_tags(warm["run_id"])
    assert tags["lineage.kind"] == "warm-start" and tags["lineage.source"] == "models:/warmnight@champion"
    assert tags["lineage.parent_version"] == first["model_version"]
    assert tags["lineage.parent_data_fingerprint"] == first["data_fingerprint"]
    assert int(tags["lineage.shared_tokens"]) > 0
    assert "from step 0" in tags["lineage.schedule"]
    assert run_tags(fresh["run_id"])["lineage.kind"] == "fresh"

    # promoted on bits per byte of night 2's val text (held out for both: the same document split rule), and the
    # registered version names its parent
    from lmforge.flows.promote import promote
    from lmforge.registry.review import facts
    from lmforge.registry.tracking import client

    decision = promote(name="warmnight", version=warm["model_version"])
    assert decision["decision"] == "promoted", decision["reason"]
    assert decision["candidate_bpb"] < decision["champion_bpb"] and "depends only on its text" in decision["scored_on"]
    version = facts(client().get_model_version("warmnight", warm["model_version"]))
    assert version["parent"] == f"warmnight v{first['model_version']}"
    assert version["lineage_parent_data_fingerprint"] == first["data_fingerprint"]
    assert "parent" not in facts(client().get_model_version("warmnight", fresh["model_version"]))
    card = client().get_model_version("warmnight", warm["model_version"]).description
    assert f"**Started from**: warmnight v{first['model_version']} (warm-start;" in card


def test_a_tokenizer_of_another_kind_is_refused_in_one_line(night1, capsys):
    from lmforge.registry.tracking import client

    nightly, _, _ = night1
    before = len(client().search_model_versions("name='warmnight'"))
    rc = main(["run", "--json", *cli_args({**nightly, "tokenizer.kind": "word", "train.init_from": "champion"})])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert rc == 2 and "Traceback" not in err
    assert errors == ["error: warm start from models:/warmnight@champion refused: its tokenizer is char, this run's "
                      "is word (hint: train from scratch (--set train.init_from=) or use the parent's tokenizer.kind)"]
    assert len(client().search_model_versions("name='warmnight'")) == before  # nothing trained or registered


def test_continue_to_a_larger_max_steps_goes_on_from_the_finished_step(registry, capsys):
    base = {**TINY, "name": "longer", "train.max_steps": 20, "train.eval_interval": 10}
    first = run(base)
    assert main(["run", "--json", "--continue", *cli_args({**base, "train.max_steps": 40})]) == 0
    longer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert longer["metrics"]["resumed_from"] == 20 and longer["metrics"]["train_steps"] == 40
    assert longer["run_dir"] != first["run_dir"]  # max_steps and the start are part of the run's identity
    first_state = json.loads((Path(first["run_dir"]) / "ckpt" / "last" / "state.json").read_text())
    assert first_state["step"] == 20  # the finished run is left as it was
    state = json.loads((Path(longer["run_dir"]) / "ckpt" / "last" / "state.json").read_text())
    assert [h["step"] for h in state["history"]] == [10, 20, 30, 40]  # the finished run's evaluations, then its own
    tags = run_tags(longer["run_id"])
    assert tags["lineage.kind"] == "continue" and tags["lineage.from_step"] == "20"
    assert tags["lineage.source"] == first["run_dir"]
    assert "steps 20-40: cosine over 40 steps taken up at step 20" in tags["lineage.schedule"]

    rc = main(["run", "--continue", *cli_args({**base, "train.max_steps": 20})])  # nothing shorter to extend
    err = capsys.readouterr().err
    assert rc == 2 and [ln for ln in err.splitlines() if ln.startswith("error: ")] == [
        "error: --continue: no finished run of longer with this config and data stops below max_steps 20 (hint: run "
        "it first without --continue, or raise train.max_steps above the finished run's)"]


def test_a_continued_run_with_a_constant_learning_rate_is_the_fresh_run_of_that_length(tmp_path, one_torch_thread):
    """What is bitwise equal (docs/scheduling.md): the batches, dropout and optimizer state go on exactly; only
    the learning rate schedule depends on max_steps, so with lr == min_lr and no warmup the two are the same."""
    from safetensors.torch import load_file

    from lmforge.core.config import ModelConfig, TrainConfig
    from lmforge.core.records import StartFrom
    from lmforge.models import build_model
    from lmforge.training.checkpoint import Identity, weights_sha256
    from lmforge.training.train import train

    data = (np.cumsum(np.random.default_rng(0).integers(1, 3, 6000)) % 23).astype(np.uint16)

    def trained(steps: int, ckpt: str, start=None):
        cfg = TrainConfig(max_steps=steps, batch_size=4, eval_interval=3, eval_iters=2, warmup_steps=0, lr=2e-3,
                          min_lr=2e-3, device="cpu", deterministic=True)
        model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, dropout=0.1), 23, seed=0)
        result = train(model, data[:5000], data[5000:], 16, cfg, tmp_path / ckpt,
                       identity=Identity(ckpt, "data", family="f"), start=start)
        return result, load_file(str(tmp_path / ckpt / "last" / "model.safetensors"))

    fresh, fresh_weights = trained(12, "fresh")
    trained(6, "short")
    start = StartFrom("continue", str(tmp_path / "short"), tmp_path / "short",
                      weights_sha256(tmp_path / "short", "last"), "data", optimizer=True, step=6)
    longer, longer_weights = trained(12, "longer", start)
    assert longer.resumed_from == 6
    assert all(torch.equal(fresh_weights[k], longer_weights[k]) for k in fresh_weights)
    drop = ("tokens_per_s",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in longer.history] == \
        [{k: v for k, v in h.items() if k not in drop} for h in fresh.history]


def test_a_warm_start_carries_shared_token_rows_and_initialises_new_ones(tmp_path):
    from lmforge.core.config import ModelConfig, TrainConfig
    from lmforge.core.records import StartFrom
    from lmforge.data.tokenize import train_char
    from lmforge.models import build_model
    from lmforge.training.checkpoint import Checkpoints
    from lmforge.training.train import make_optimizer
    from lmforge.training.warmstart import with_vocabulary, load_warm_start

    old_tok, new_tok = train_char(["abc"]), train_char(["abcxyz"])
    old_tok.save(str(tmp_path / "old.json"))
    new_tok.save(str(tmp_path / "new.json"))
    spec = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8)
    parent = build_model(spec, old_tok.get_vocab_size(), seed=1)
    Checkpoints(tmp_path / "ckpt").save("best", parent, None, {"step": 1})
    start = with_vocabulary(StartFrom("warm-start", "parent", tmp_path / "ckpt", "sha", "fp",
                                      tokenizer_file=tmp_path / "old.json"), tmp_path / "new.json", optimizer=False)
    child = build_model(spec, new_tok.get_vocab_size(), seed=2)
    fresh_rows = child.wte.weight.detach().clone()
    note = load_warm_start(child, make_optimizer(child, TrainConfig(), "cpu"), start)
    assert note == "warm start from parent: 7 token rows carried over, 3 new"  # 4 specials + a, b, c; x, y, z new
    new_vocab, old_vocab = new_tok.get_vocab(), old_tok.get_vocab()
    for token, i in new_vocab.items():
        expected = parent.wte.weight[old_vocab[token]] if token in old_vocab else fresh_rows[i]
        assert torch.equal(child.wte.weight[i], expected), token
    assert torch.equal(child.blocks[0].attn.c_attn.weight, parent.blocks[0].attn.c_attn.weight)
    assert child.lm_head.weight is child.wte.weight  # still tied


def test_init_optimizer_carries_the_parents_moments_and_refuses_another_optimizers(night1, capsys, caplog):
    """train.init_optimizer: the parent's AdamW moments come along (the run says so); a run with another optimizer
    (Muon's groups) cannot take them: one line, nothing trained."""
    from lmforge.registry.tracking import client

    nightly, _, _ = night1
    carried = {**nightly, "train.max_steps": 20, "train.eval_interval": 10, "train.init_from": "champion",
               "train.init_optimizer": "true"}
    with caplog.at_level(logging.INFO):
        assert main(["run", *cli_args(carried)]) == 0
    assert "optimizer moments too" in caplog.text
    capsys.readouterr()
    before = len(client().search_model_versions("name='warmnight'"))
    rc = main(["run", "--json", *cli_args({**carried, "train.optimizer": "muon"})])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert rc == 2 and "Traceback" not in err
    assert len(errors) == 1 and "was trained with another optimizer" in errors[0], err[-2000:]
    assert "(hint: --set train.init_optimizer=false" in errors[0]
    assert len(client().search_model_versions("name='warmnight'")) == before
