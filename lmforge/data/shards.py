"""Token shards: documents split into train/val by a seeded draw, written as flat uint16/uint32 binary files
plus meta.json, read back with numpy.memmap. Writing streams: memory does not grow with corpus size."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from lmforge.atomic import write_json_atomic
from lmforge.errors import LmforgeError

META = "meta.json"
SPLITS = ("train", "val")


def shard_dtype(vocab_size: int) -> np.dtype:
    if vocab_size <= 2**16:
        return np.dtype(np.uint16)
    if vocab_size <= 2**32:
        return np.dtype(np.uint32)
    raise LmforgeError(f"vocabulary of {vocab_size} ids does not fit a uint32 shard",
                       hint="lower tokenizer.vocab_size")


def split_mask(n_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """True where a document goes to val. At least one document on each side when there are two or more."""
    rng = np.random.default_rng(seed)
    is_val = rng.random(n_docs) < val_fraction
    if n_docs >= 2:
        if not is_val.any():
            is_val[rng.integers(n_docs)] = True
        if is_val.all():
            is_val[rng.integers(n_docs)] = False
    return is_val


def write_shards(encoded: Iterable[tuple[np.ndarray, np.ndarray]], is_val: np.ndarray, out_dir: Path,
                 vocab_size: int, extra_meta: dict | None = None) -> dict:
    """Stream batches of (token ids, ids per document) into out_dir/{train,val}.bin, routing each document by
    is_val[document index]; returns the meta written to meta.json."""
    counts = write_split_files(encoded, is_val, {n: out_dir / f"{n}.bin" for n in SPLITS}, shard_dtype(vocab_size))
    return write_meta(out_dir, vocab_size, counts, extra_meta)


def write_split_files(encoded: Iterable[tuple[np.ndarray, np.ndarray]], is_val: np.ndarray,
                      paths: dict[str, Path], dtype: np.dtype) -> dict:
    """The routing of write_shards into the files paths["train"] and paths["val"] (each written to a temp
    file, then renamed); returns {split: {"tokens", "documents"}}."""
    Path(paths["train"]).parent.mkdir(parents=True, exist_ok=True)
    tmp = {n: Path(paths[n]).with_name(f".{Path(paths[n]).name}.{os.getpid()}.tmp") for n in SPLITS}
    counts = {n: {"tokens": 0, "documents": 0} for n in SPLITS}
    files = {n: open(tmp[n], "wb") for n in SPLITS}
    first_doc = 0
    try:
        for ids, lens in encoded:
            doc_val = is_val[first_doc:first_doc + lens.size]
            first_doc += lens.size
            token_val = np.repeat(doc_val, lens)
            for name, mask in (("train", ~token_val), ("val", token_val)):
                part = ids[mask]
                files[name].write(part.astype(dtype, copy=False).tobytes())
                counts[name]["tokens"] += int(part.size)
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
    return counts


def concat_split_files(parts: list[dict], out_dir: Path, vocab_size: int,
                       extra_meta: dict | None = None) -> dict:
    """Join parts ({"train": path, "val": path, "counts": what write_split_files returned}), in order, into
    out_dir/{train,val}.bin (the same bytes write_shards writes for the whole stream); deletes the parts;
    returns the meta written to meta.json."""
    counts = {n: {"tokens": 0, "documents": 0} for n in SPLITS}
    for n in SPLITS:
        tmp = out_dir / f".{n}.bin.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(part[n], "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
                    counts[n]["tokens"] += part["counts"][n]["tokens"]
                    counts[n]["documents"] += part["counts"][n]["documents"]
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, out_dir / f"{n}.bin")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    for part in parts:
        for n in SPLITS:
            Path(part[n]).unlink(missing_ok=True)
    return write_meta(out_dir, vocab_size, counts, extra_meta)


def write_meta(out_dir: Path, vocab_size: int, counts: dict, extra_meta: dict | None = None) -> dict:
    meta = {"vocab_size": vocab_size, "dtype": shard_dtype(vocab_size).name,
            **{n: {"path": f"{n}.bin", **counts[n]} for n in SPLITS}, **(extra_meta or {})}
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
