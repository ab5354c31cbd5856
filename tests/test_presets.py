"""Every preset loads and validates; one fast flow-free run per family on the real corpus (prepare, train a
few steps, export, generate through the runtime) with tiny overrides."""
from __future__ import annotations

import json
import math

import pytest

from conftest import corpus
from lmforge.core.config import list_presets, load_config
from lmforge.data.prepare import prepare_corpus
from lmforge.data.shards import open_shard
from lmforge.data.sources import acquire, is_url
from lmforge.core.errors import LmforgeError
from lmforge.core.config import ExportConfig
from lmforge.export.modeldir import export_model_dir
from lmforge.models import build_model
from lmforge.runtime import Generator
from lmforge.training.train import train

SEED_PRESETS = ["tinystories-lstm", "jokes-gpt2", "imdb-gpt", "lebanon-gru", "shakespeare-char"]
TINY = {"model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.n_hidden": 48, "model.block_size": 32,
        "train.max_steps": 30, "train.eval_interval": 15, "train.eval_iters": 2, "train.batch_size": 8,
        "train.warmup_steps": 5, "train.threads": 1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", SEED_PRESETS)
def test_preset_loads_and_validates(name, tmp_path):
    assert name in list_presets() and list_presets()[name]
    ckpt = str(tmp_path)  # a local directory: model.pretrained must be one (lmforge downloads no weights)
    cfg = load_config(name, {"model.pretrained": ckpt} if name == "jokes-gpt2" else None)
    assert is_url(cfg.data.source)
    assert cfg.name == name
    if name == "jokes-gpt2":
        assert cfg.tokenizer.path == ckpt  # the checkpoint's own tokenizer by default


def test_gpt2_preset_explains_the_missing_checkpoint():
    with pytest.raises(LmforgeError, match="GPT-2 checkpoint") as info:
        load_config("jokes-gpt2")
    assert "model.pretrained" in info.value.hint


def run_library(name: str, overrides: dict, tmp_path) -> tuple[dict, dict, Generator]:
    """prepare -> train -> export -> Generator, the same calls the flow's tasks make."""
    cfg = load_config(name, {**TINY, **overrides})
    meta = prepare_corpus(acquire(cfg.data.source, tmp_path / "cache"), cfg, tmp_path / "data")
    model = build_model(cfg.model, meta["vocab_size"])
    result = train(model, open_shard(tmp_path / "data", "train"), open_shard(tmp_path / "data", "val"),
                   cfg.model.block_size, cfg.train, tmp_path / "ckpt")
    manifest = {"name": name, "tokenizer": {"kind": cfg.tokenizer.kind, "file": "tokenizer.json"},
                "tokens": meta["special_ids"], "generation": {"temperature": 1.0, "max_new_tokens": 10}}
    out, metrics = export_model_dir(model, tmp_path / "data" / "tokenizer.json", tmp_path / "model", manifest,
                                    ExportConfig(int8=False))
    assert metrics["onnx_parity_max_abs"] <= 1e-4
    assert result.steps == 30 and result.best_val_loss < math.log(meta["vocab_size"])  # beats uniform
    return meta, json.loads((out / "lmforge.json").read_text()), Generator(out)


def test_tinystories_lstm_on_real_corpus(tmp_path):
    src = corpus("tinystories-sample.txt")
    meta, manifest, gen = run_library("tinystories-lstm", {"data.source": str(src), "data.separator": ""}, tmp_path)
    assert manifest["model"]["family"] == "lstm" and manifest["io"]["state"][1]["input"] == "state.c"
    assert meta["special_ids"]["unk"] is not None  # min_frequency left rare words out
    text = gen.generate("Once upon a zorblax", max_new_tokens=8, seed=0)  # an unseen word reads as <unk>
    assert isinstance(text, str) and text


def test_lebanon_gru_on_real_corpus(tmp_path):
    src = corpus("ArSenTD-LEV.tsv")
    meta, manifest, gen = run_library("lebanon-gru", {"data.source": str(src)}, tmp_path)
    assert 2700 <= meta["documents"] <= 4000  # all four countries' tweets: 4000 rows, 2809 unique
    assert meta["split"]["val_filter"] == 'Country == "lebanon"' and 80 <= meta["val"]["documents"] <= 200  # ~20% of 673
    assert manifest["model"]["family"] == "gru" and [s["kind"] for s in manifest["io"]["state"]] == ["rnn"]
    assert gen.generate(["كان", ""], max_new_tokens=5, seed=0)


def test_imdb_gpt_on_real_corpus(tmp_path):
    src = corpus("imdb-reviews.csv")
    meta, manifest, gen = run_library("imdb-gpt", {"data.source": str(src), "data.format": "csv",
                                                   "data.column": "review", "data.max_documents": 300,
                                                   "tokenizer.vocab_size": 512}, tmp_path)
    assert manifest["model"]["family"] == "gpt" and meta["vocab_size"] <= 512
    assert gen.generate("this movie is", max_new_tokens=5, top_k=10, seed=0)


def test_shakespeare_char_on_real_corpus(tmp_path):
    src = corpus("tinyshakespeare.txt")
    meta, manifest, gen = run_library("shakespeare-char", {"data.source": str(src)}, tmp_path)
    assert manifest["model"]["n_layer"] == 1 and meta["vocab_size"] < 100


def test_jokes_gpt2_on_real_corpus(tmp_path):
    pytest.importorskip("transformers")
    from test_models import save_tiny_gpt2

    src = corpus("onelinefun.csv")
    ckpt = tmp_path / "gpt2"
    ckpt.mkdir()
    save_tiny_gpt2(ckpt)
    meta, manifest, gen = run_library("jokes-gpt2", {"data.source": str(src), "data.max_documents": 400,
                                                     "model.pretrained": str(ckpt), "train.lr": 1e-3}, tmp_path)
    assert manifest["model"]["family"] == "hf-gpt2" and manifest["tokens"]["eos"] == meta["special_ids"]["eos"]
    assert manifest["model"]["block_size"] == 64  # the checkpoint's context, not the training window
    assert isinstance(gen.generate("Why", max_new_tokens=5, seed=0), str)
