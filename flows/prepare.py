"""`lmforge prepare`: acquire -> clean -> tokenize + shard only."""
from __future__ import annotations

from prefect import flow

from lmforge.config import load_config
from lmforge.layout import RunLayout
from tasks.data import acquire_data, clean_data, tokenize_data


@flow(name="lmforge-prepare")
def prepare(preset: str = "jokes-char", overrides: dict | None = None) -> dict:
    cfg = load_config(preset, overrides)
    where = RunLayout.for_config(cfg)
    docs = clean_data(acquire_data(cfg, where.cache), cfg)
    meta = tokenize_data(docs, cfg, where.data)
    return {"documents": meta["documents"], "chars": meta["chars"], "vocab_size": meta["vocab_size"],
            "train_tokens": meta["train"]["tokens"], "val_tokens": meta["val"]["tokens"],
            "shards": [f"{meta['dir']}/train.bin", f"{meta['dir']}/val.bin"], "dir": meta["dir"],
            "cached": meta.get("cached", False)}
