"""Corpus -> the prepared-data directory (tokenizer.json, train.bin, val.bin, meta.json), streaming:
1. read + clean batch by batch into a spill file (.cleaned.<pid>.jsonl), hashing documents as they pass;
2. split documents into train/val by a seeded draw (one bool per document);
3. train the tokenizer on the train documents read back from the spill file;
4. encode batch by batch and append to the shards; delete the spill file.
Memory holds one batch (~1 MB of text) at a time, plus the dedupe hashes and the split mask.
A directory whose meta.json records the same source fingerprint is reused instead of recomputed.
partition.py runs the same steps in parts (data.parts > 1) and writes the same bytes."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
from tokenizers import Tokenizer

from lmforge.config import Config
from lmforge.data.clean import clean_batches
from lmforge.data.formats import detect_format, iter_batches
from lmforge.data.rowfilter import all_of
from lmforge.data.shards import META, split_mask, write_shards
from lmforge.data.tokenize import build_tokenizer, encode_batches, special_ids
from lmforge.errors import LmforgeError
from lmforge.redact import redact_text

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


class SpillWriter:
    """Cleaned documents to a spill file, one JSON list per line (ASCII escapes keep even lone surrogates
    intact), counting documents and characters, hashing them in order, and noting where each line starts."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "w", encoding="ascii")
        self.hash = hashlib.sha256()
        self.documents = self.chars = 0
        self.lines: list[tuple[int, int]] = []  # (byte offset, documents) per line
        self.offset = 0

    def write(self, docs: list[str]) -> None:
        line = json.dumps(docs) + "\n"
        self.lines.append((self.offset, len(docs)))
        self.offset += self.file.write(line)  # ASCII: characters are bytes
        self.hash.update(("\0".join(docs) + "\0").encode("utf-8", "surrogatepass"))
        self.documents += len(docs)
        self.chars += sum(map(len, docs))

    def close(self, report: list[dict]) -> dict:
        self.file.close()
        return {"spill": str(self.path), "documents": self.documents, "chars": self.chars,
                "corpus_sha256": self.hash.hexdigest(), "lines": self.lines, "clean_report": report}

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def clean_to_spill(path: Path, cfg: Config, out_dir: Path, files: list[Path] | None = None,
                   spill_name: str = ".cleaned") -> dict:
    """Read and clean the corpus (or only `files` of a directory source) into out_dir/<spill_name>.<pid>.jsonl;
    returns the SpillWriter summary (spill, documents, chars, corpus_sha256, lines, clean_report)."""
    d = cfg.data
    out_dir.mkdir(parents=True, exist_ok=True)
    batches = iter_batches(Path(path), d.format, d.column, d.filter, d.separator, d.encoding_errors, files)
    if d.max_documents:
        batches = limit_documents(batches, d.max_documents)
    report: list[dict] = []
    spill = SpillWriter(out_dir / f"{spill_name}.{os.getpid()}.jsonl")  # per process: runs never share it
    try:
        for docs in clean_batches(batches, cfg.clean, report):
            spill.write(docs)
    except BaseException:
        spill.discard()
        raise
    return spill.close(report)


def finish_cleaning(cleaned: dict, path: Path, cfg: Config) -> dict:
    """Check that documents are left, and mark the val-eligible ones when data.val_filter is set."""
    if not cleaned["documents"]:
        remove_spill(cleaned)
        raise LmforgeError(f"no documents left in {path} after reading and cleaning",
                           hint="check data.format / data.column / data.filter and clean.min_chars")
    if not cfg.data.val_filter:
        return cleaned
    try:
        return {**cleaned, "val_ok": str(mark_val_eligible(cleaned, path, cfg))}
    except BaseException:
        remove_spill(cleaned)
        raise


def mark_val_eligible(cleaned: dict, path: Path, cfg: Config) -> Path:
    """<spill>.val-ok.npy: a boolean per cleaned document, true when a table row matching data.val_filter
    cleans to the same text (one more streaming pass over the rows; memory is a hash per matching row)."""
    d = cfg.data
    if (detect_format(Path(path)) if d.format == "auto" else d.format) not in ("csv", "tsv"):
        raise LmforgeError(f"data.val_filter selects table rows, but {path} is not read as a table",
                           hint="--set data.format=csv (or tsv), or --set data.val_filter=")
    rows = all_of(("data.filter", d.filter), ("data.val_filter", d.val_filter))  # two trees, never one string
    matching = iter_batches(Path(path), d.format, d.column, rows, d.separator, d.encoding_errors)
    eligible: set[int] = set()
    for docs in clean_batches(matching, dataclasses.replace(cfg.clean, dedupe=False), []):
        eligible.update(pd.util.hash_array(np.array(docs, dtype=object)).tolist())
    eligible_hashes = np.fromiter(eligible, np.uint64, len(eligible))
    ok = np.concatenate([np.isin(pd.util.hash_array(np.array(docs, dtype=object)), eligible_hashes)
                         for docs in read_spill(Path(cleaned["spill"]))])
    if not ok.any():
        raise LmforgeError(f"no document of {path} matches data.val_filter {d.val_filter!r}",
                           hint="check the filter against the file's rows, or --set data.val_filter=")
    mask = Path(cleaned["spill"] + ".val-ok.npy")
    np.save(mask, ok)
    return mask


def remove_spill(cleaned: dict) -> None:
    Path(cleaned["spill"]).unlink(missing_ok=True)
    if cleaned.get("val_ok"):
        Path(cleaned["val_ok"]).unlink(missing_ok=True)


def document_split(cleaned: dict, cfg: Config) -> np.ndarray:
    """True where a document goes to val: the seeded draw, limited to val-eligible documents (data.val_filter)."""
    is_val = split_mask(cleaned["documents"], cfg.data.val_fraction, cfg.data.seed)
    if cleaned.get("val_ok"):
        ok = np.load(cleaned["val_ok"])
        is_val &= ok
        if not is_val.any():  # the draw missed every eligible document: take the first
            is_val[np.flatnonzero(ok)[0]] = True
    return is_val


def read_spill(spill: Path, start: int = 0, stop: int | None = None) -> Iterator[list[str]]:
    """The batches of a spill file, or those on the lines starting at byte offsets start..stop-1."""
    with open(spill, encoding="ascii") as f:
        f.seek(start)
        while stop is None or f.tell() < stop:
            line = f.readline()
            if not line:
                return
            yield json.loads(line)


def split_documents(batches: Iterable[list[str]], is_val: np.ndarray, want_val: bool) -> Iterator[str]:
    first = 0
    for docs in batches:
        for d, v in zip(docs, is_val[first:first + len(docs)].tolist()):
            if v == want_val:
                yield d
        first += len(docs)


def train_tokenizer(cleaned: dict, cfg: Config, out_dir: Path) -> Tokenizer:
    """Train the configured tokenizer on the train documents of the spill file; write out_dir/tokenizer.json.
    Removes meta.json first: the directory is incomplete until the new one lands."""
    (out_dir / META).unlink(missing_ok=True)
    is_val = document_split(cleaned, cfg)
    t = cfg.tokenizer
    tok = build_tokenizer(t.kind, split_documents(read_spill(Path(cleaned["spill"])), is_val, False),
                          vocab_size=t.vocab_size, min_frequency=t.min_frequency, path=t.path)
    tmp = out_dir / f".tokenizer.json.{os.getpid()}.tmp"
    tok.save(str(tmp))
    os.replace(tmp, out_dir / "tokenizer.json")
    return tok


def shard_meta(cleaned: dict, cfg: Config, tok: Tokenizer, fingerprint: str, val_chars: int) -> dict:
    """What meta.json records beside the shard counts."""
    return {"tokenizer": {"kind": cfg.tokenizer.kind, "file": "tokenizer.json"},
            "special_ids": special_ids(tok), "documents": cleaned["documents"], "chars": cleaned["chars"],
            "val_chars": val_chars, "val_filter": cfg.data.val_filter, "corpus_sha256": cleaned["corpus_sha256"],
            "source": redact_text(cfg.data.source), "source_fingerprint": fingerprint,  # redacted: no credentials
            "prepared_format": PREPARED_FORMAT, "clean_report": cleaned["clean_report"]}


def tokenize_and_shard(cleaned: dict, cfg: Config, out_dir: Path, fingerprint: str = "",
                       timings: dict | None = None) -> dict:
    """Train the tokenizer on the spill file's train documents, write it and the shards; delete the spill.
    `timings`, when given, receives the seconds spent training the tokenizer and encoding + sharding."""
    timings = {} if timings is None else timings
    spill = Path(cleaned["spill"])
    try:
        start = time.perf_counter()
        tok = train_tokenizer(cleaned, cfg, out_dir)
        timings["train_tokenizer_s"] = time.perf_counter() - start
        start = time.perf_counter()
        is_val = document_split(cleaned, cfg)
        val_chars = sum(len(d) for d in split_documents(read_spill(spill), is_val, True))
        meta = write_shards(encode_batches(tok, read_spill(spill)), is_val, out_dir, tok.get_vocab_size(),
                            extra_meta=shard_meta(cleaned, cfg, tok, fingerprint, val_chars))
    finally:
        remove_spill(cleaned)
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
        cleaned = finish_cleaning(clean_to_spill(path, cfg, out_dir), path, cfg)
        timings["read_clean_s"] = time.perf_counter() - start
        meta = tokenize_and_shard(cleaned, cfg, out_dir, fingerprint, timings)
    return meta
