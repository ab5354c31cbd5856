"""Documents -> tokenizer.json + train/val token shards + meta.json (the prepared-data directory)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lmforge.config import Config
from lmforge.data.shards import split_mask, write_shards
from lmforge.data.tokenize import build_tokenizer, encode_documents, special_ids


def corpus_hash(docs: list[str]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def tokenize_and_shard(docs: list[str], cfg: Config, out_dir: Path) -> dict:
    """Build the configured tokenizer on the train documents, write it and the shards; return meta."""
    out_dir.mkdir(parents=True, exist_ok=True)
    is_val = split_mask(len(docs), cfg.data.val_fraction, cfg.data.seed)
    train_docs = [d for d, v in zip(docs, is_val) if not v]
    t = cfg.tokenizer
    tok = build_tokenizer(t.kind, train_docs, vocab_size=t.vocab_size, min_frequency=t.min_frequency, path=t.path)
    tmp = out_dir / f".tokenizer.json.{os.getpid()}.tmp"
    tok.save(str(tmp))
    os.replace(tmp, out_dir / "tokenizer.json")
    val_chars = sum(len(d) for d, v in zip(docs, is_val) if v)
    meta = write_shards(encode_documents(tok, docs), is_val, out_dir, tok.get_vocab_size(), extra_meta={
        "tokenizer": {"kind": t.kind, "file": "tokenizer.json"}, "special_ids": special_ids(tok),
        "documents": len(docs), "chars": sum(len(d) for d in docs), "val_chars": val_chars,
        "corpus_sha256": corpus_hash(docs), "source": cfg.data.source})
    return {**meta, "dir": str(out_dir)}
