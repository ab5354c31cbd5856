"""Corpus -> the prepared-data directory (tokenizer.json, train.bin, val.bin, meta.json), streaming:
1. read + clean batch by batch into a spill file (.cleaned.<pid>.jsonl), hashing documents as they pass;
2. split documents into train/val by a seeded draw (one bool per document);
3. train the tokenizer on the train documents read back from the spill file;
4. encode batch by batch and append to the shards; delete the spill file.
Memory holds one batch (~1 MB of text) at a time, plus the dedupe hashes and the split mask.
A directory whose meta.json records the same source fingerprint is reused instead of recomputed."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from lmforge.config import Config
from lmforge.data.clean import clean_batches
from lmforge.data.formats import iter_batches
from lmforge.data.shards import META, split_mask, write_shards
from lmforge.data.tokenize import build_tokenizer, encode_batches, special_ids
from lmforge.errors import LmforgeError

PREPARED_FORMAT = 2  # bump when the shard layout or the pipeline's output changes


def source_fingerprint(path: Path) -> str:
    """Identity of the corpus files: relative path, size and mtime of each (cheap; no content read)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256(f"format={PREPARED_FORMAT}".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def cached_meta(out_dir: Path, fingerprint: str) -> dict | None:
    """The meta of a complete earlier preparation of the same source, or None."""
    try:
        meta = json.loads((out_dir / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("source_fingerprint") != fingerprint or not (out_dir / "tokenizer.json").is_file():
        return None
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in ("train", "val"):
        shard = out_dir / meta[split]["path"]
        if not shard.is_file() or shard.stat().st_size != meta[split]["tokens"] * itemsize:
            return None
    return {**meta, "dir": str(out_dir), "cached": True}


def limit_documents(batches: Iterable[list[str]], limit: int) -> Iterator[list[str]]:
    left = limit
    for docs in batches:
        if left <= 0:
            return
        yield docs[:left]
        left -= len(docs)


def clean_to_spill(path: Path, cfg: Config, out_dir: Path) -> dict:
    """Read and clean the corpus into out_dir/.cleaned.<pid>.jsonl (one JSON list of documents per line); returns its summary (documents, chars, hash, report)."""
    d = cfg.data
    out_dir.mkdir(parents=True, exist_ok=True)
    batches = iter_batches(Path(path), d.format, d.column, d.filter, d.separator, d.encoding_errors)
    if d.max_documents:
        batches = limit_documents(batches, d.max_documents)
    report: list[dict] = []
    h = hashlib.sha256()
    n_docs = n_chars = 0
    spill = out_dir / f".cleaned.{os.getpid()}.jsonl"  # per process: two runs of one config never share it
    try:
        with open(spill, "w", encoding="ascii") as f:
            for docs in clean_batches(batches, cfg.clean, report):
                f.write(json.dumps(docs) + "\n")  # ASCII escapes keep even lone surrogates intact
                h.update(("\0".join(docs) + "\0").encode("utf-8", "surrogatepass"))
                n_docs += len(docs)
                n_chars += sum(map(len, docs))
    except BaseException:
        spill.unlink(missing_ok=True)
        raise
    if not n_docs:
        spill.unlink()
        raise LmforgeError(f"no documents left in {path} after reading and cleaning",
                           hint="check data.format / data.column / data.filter and clean.min_chars")
    return {"spill": str(spill), "documents": n_docs, "chars": n_chars, "corpus_sha256": h.hexdigest(),
            "clean_report": report}


def read_spill(spill: Path) -> Iterator[list[str]]:
    with open(spill, encoding="ascii") as f:
        for line in f:
            yield json.loads(line)


def split_documents(batches: Iterable[list[str]], is_val: np.ndarray, want_val: bool) -> Iterator[str]:
    first = 0
    for docs in batches:
        for d, v in zip(docs, is_val[first:first + len(docs)].tolist()):
            if v == want_val:
                yield d
        first += len(docs)


def tokenize_and_shard(cleaned: dict, cfg: Config, out_dir: Path, fingerprint: str = "",
                       timings: dict | None = None) -> dict:
    """Train the configured tokenizer on the train documents of the spill file, write it and the shards.
    `timings`, when given, receives the seconds spent training the tokenizer and encoding + sharding."""
    timings = {} if timings is None else timings
    start = time.perf_counter()
    spill = Path(cleaned["spill"])
    (out_dir / META).unlink(missing_ok=True)  # the directory is incomplete until the new meta.json lands
    try:
        is_val = split_mask(cleaned["documents"], cfg.data.val_fraction, cfg.data.seed)
        t = cfg.tokenizer
        tok = build_tokenizer(t.kind, split_documents(read_spill(spill), is_val, False), vocab_size=t.vocab_size,
                              min_frequency=t.min_frequency, path=t.path)
        tmp = out_dir / f".tokenizer.json.{os.getpid()}.tmp"
        tok.save(str(tmp))
        os.replace(tmp, out_dir / "tokenizer.json")
        timings["train_tokenizer_s"] = time.perf_counter() - start
        start = time.perf_counter()
        val_chars = sum(len(d) for d in split_documents(read_spill(spill), is_val, True))
        meta = write_shards(encode_batches(tok, read_spill(spill)), is_val, out_dir, tok.get_vocab_size(),
                            extra_meta={
                                "tokenizer": {"kind": t.kind, "file": "tokenizer.json"},
                                "special_ids": special_ids(tok), "documents": cleaned["documents"],
                                "chars": cleaned["chars"], "val_chars": val_chars,
                                "corpus_sha256": cleaned["corpus_sha256"], "source": cfg.data.source,
                                "source_fingerprint": fingerprint, "prepared_format": PREPARED_FORMAT,
                                "clean_report": cleaned["clean_report"]})
    finally:
        spill.unlink(missing_ok=True)
    timings["encode_shard_s"] = time.perf_counter() - start
    return {**meta, "dir": str(out_dir), "cached": False}


def check_fits_context(meta: dict, block_size: int) -> None:
    """Training needs more than one context window (block_size + 1 tokens) in each split."""
    for split in ("train", "val"):
        if meta[split]["tokens"] <= block_size + 1:
            raise LmforgeError(f"the prepared {split} split has {meta[split]['tokens']} tokens, fewer than one "
                               f"context window ({block_size + 1})",
                               hint="use a larger corpus or --set model.block_size=SMALLER")


def prepare_corpus(path: Path, cfg: Config, out_dir: Path, timings: dict | None = None) -> dict:
    """All steps in one call, reusing out_dir when it already holds this source prepared with this config.
    `timings`, when given, receives the seconds of each phase (read_clean_s, train_tokenizer_s, encode_shard_s)."""
    timings = {} if timings is None else timings
    fingerprint = source_fingerprint(path)
    meta = cached_meta(out_dir, fingerprint)
    if meta is None:
        start = time.perf_counter()
        cleaned = clean_to_spill(path, cfg, out_dir)
        timings["read_clean_s"] = time.perf_counter() - start
        meta = tokenize_and_shard(cleaned, cfg, out_dir, fingerprint, timings)
    return meta
