"""Token shards: pieces of the corpus (documents, or the two sides of a contiguous cut) routed to train/val and
written as flat uint16/uint32 binary files plus meta.json (token counts and each file's sha256), read back with
numpy.memmap. Writing streams: memory does not grow with corpus size."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from lmforge.core import interrupt
from lmforge.core.atomic import write_json_atomic
from lmforge.core.errors import LmforgeError

META = "meta.json"
SPLITS = ("train", "val")


def shard_dtype(vocab_size: int) -> np.dtype:
    if vocab_size <= 2**16:
        return np.dtype(np.uint16)
    if vocab_size <= 2**32:
        return np.dtype(np.uint32)
    raise LmforgeError(f"vocabulary of {vocab_size} ids does not fit a uint32 shard",
                       hint="lower tokenizer.vocab_size")


def content_split(hashes: np.ndarray, val_fraction: float, eligible: np.ndarray | None = None) -> np.ndarray:
    """True where a document goes to val, decided by the document's own content hash (uint64, keyed by the
    split seed): a document keeps its side whatever else the corpus gains or loses, so a model trained on one
    version of a corpus never saw the val documents of the next. `eligible` limits val to some documents
    (data.val_filter). At least one document on each side when there are two or more (the lowest hash goes to
    val, the highest to train)."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    ok = np.ones(hashes.size, bool) if eligible is None else np.asarray(eligible, bool)
    is_val = ok & (hashes.astype(np.float64) < val_fraction * 2.0**64)
    if hashes.size >= 2:
        if not is_val.any() and ok.any():
            candidates = np.flatnonzero(ok)
            is_val[candidates[np.argmin(hashes[candidates])]] = True
        if is_val.all():
            is_val[np.argmax(hashes)] = False
    return is_val


def with_flags(encoded: Iterable[tuple[np.ndarray, np.ndarray]], is_val: np.ndarray
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(ids, ids per document) batches paired with each document's val flag, taken in order from is_val."""
    first = 0
    for ids, lens in encoded:
        yield ids, lens, is_val[first:first + lens.size]
        first += lens.size


def write_shards(encoded: Iterable[tuple[np.ndarray, np.ndarray]], is_val: np.ndarray, out_dir: Path,
                 vocab_size: int, extra_meta: dict | None = None) -> dict:
    """Stream batches of (token ids, ids per document) into out_dir/{train,val}.bin, routing each document by
    is_val[document index]; returns the meta written to meta.json."""
    counts = write_split_files(with_flags(encoded, is_val), {n: out_dir / f"{n}.bin" for n in SPLITS},
                               shard_dtype(vocab_size))
    return write_meta(out_dir, meta_for(vocab_size, counts, extra_meta))


def write_split_files(routed: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], paths: dict[str, Path],
                      dtype: np.dtype) -> dict:
    """Route each piece (a document, or part of the text stream) of each batch to paths["train"] or
    paths["val"] by its flag (each file written to a temp file, then renamed); returns
    {split: {"tokens", "documents", "sha256"}} (sha256 of the file's bytes)."""
    Path(paths["train"]).parent.mkdir(parents=True, exist_ok=True)
    tmp = {n: Path(paths[n]).with_name(f".{Path(paths[n]).name}.{os.getpid()}.tmp") for n in SPLITS}
    counts = {n: {"tokens": 0, "documents": 0} for n in SPLITS}
    digests = {n: hashlib.sha256() for n in SPLITS}
    files = {n: open(tmp[n], "wb") for n in SPLITS}
    try:
        for ids, lens, doc_val in routed:
            interrupt.check("data preparation")
            token_val = np.repeat(doc_val, lens)
            for name, mask in (("train", ~token_val), ("val", token_val)):
                data = ids[mask].astype(dtype, copy=False).tobytes()
                files[name].write(data)
                digests[name].update(data)
                counts[name]["tokens"] += len(data) // dtype.itemsize
            counts["val"]["documents"] += int(doc_val.sum())
            counts["train"]["documents"] += int(doc_val.size - doc_val.sum())
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        for n in SPLITS:
            files[n].close()
            tmp[n].unlink(missing_ok=True)
        raise
    for n in SPLITS:
        files[n].close()
        os.replace(tmp[n], paths[n])
        counts[n]["sha256"] = digests[n].hexdigest()
    return counts


def concat_split_files(parts: list[dict], out_dir: Path) -> dict:
    """Join parts ({"train": path, "val": path, "counts": what write_split_files returned}), in order, into
    out_dir/{train,val}.bin (the same bytes write_split_files writes for the whole stream); deletes the parts;
    returns the joined counts, as write_split_files does."""
    counts = {n: {"tokens": 0, "documents": 0} for n in SPLITS}
    for n in SPLITS:
        tmp = out_dir / f".{n}.bin.{os.getpid()}.tmp"
        digest = hashlib.sha256()
        try:
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part[n], "rb") as f:
                        while block := f.read(1 << 22):
                            out.write(block)
                            digest.update(block)
                    counts[n]["tokens"] += part["counts"][n]["tokens"]
                    counts[n]["documents"] += part["counts"][n]["documents"]
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, out_dir / f"{n}.bin")
            counts[n]["sha256"] = digest.hexdigest()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    for part in parts:
        for n in SPLITS:
            Path(part[n]).unlink(missing_ok=True)
    return counts


def meta_for(vocab_size: int, counts: dict, extra_meta: dict | None = None) -> dict:
    """meta.json's content: vocabulary, dtype, each split's file and counts, plus extra_meta."""
    return {"vocab_size": vocab_size, "dtype": shard_dtype(vocab_size).name,
            **{n: {"path": f"{n}.bin", **counts[n]} for n in SPLITS}, **(extra_meta or {})}


def write_meta(out_dir: Path, meta: dict) -> dict:
    """Write meta.json last and atomically: its presence marks the directory complete."""
    write_json_atomic(out_dir / META, meta)
    return meta


def read_meta(shard_dir: Path) -> dict:
    path = Path(shard_dir) / META
    if not path.is_file():
        raise LmforgeError(f"no prepared shards in {shard_dir}", hint="run `lmforge prepare` first")
    return json.loads(path.read_text(encoding="utf-8"))


def open_shard(shard_dir: Path, split: str) -> np.memmap:
    meta = read_meta(shard_dir)
    path = Path(shard_dir) / meta[split]["path"]
    if meta[split]["tokens"] == 0:
        return np.zeros(0, dtype=meta["dtype"])  # type: ignore[return-value]
    return np.memmap(path, dtype=meta["dtype"], mode="r")
