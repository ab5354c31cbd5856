"""Data preparation in parts that run independently (on Dask workers through prefect-dask's DaskTaskRunner,
on threads, or one after another), giving the same bytes as prepare_corpus:
1. plan_parts: the files of a directory source in contiguous groups of about equal size (one part for a
   single file or table);
2. clean_part: each group read and cleaned by every step but dedupe, into its own spill file;
3. merge_cleaned: the part spills, in order, through dedupe into one spill file, as clean_to_spill writes;
4. plan_tokenize: the split (prepare.plan_split) and the tokenizer, once, and the runs of spill lines to encode;
5. encode_part: each run of spill lines encoded into its own pair of part shards;
6. join_shards: the part shards, in order, into train.bin and val.bin with meta.json.
Parts read and write the prepared-data directory, so workers on other machines need it on a shared disk."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from lmforge.core.config import Config
from lmforge.core.records import Cleaned, EncodedPart, EncodeRun, PartsPlan, PreparedData
from lmforge.data.clean import make_dedupe
from lmforge.data.corpus import source_files
from lmforge.data.prepare import (Split, SpillWriter, cached_meta, clean_to_spill, finish_cleaning, plan_split,
                                  read_spill, remove_spill, routed_batches, shard_meta, source_fingerprint,
                                  split_documents, train_tokenizer, write_prepared_meta)
from lmforge.data.shards import concat_split_files, shard_dtype, write_split_files
from lmforge.data.tokenize import load_tokenizer


def plan_or_reuse(path: Path, cfg: Config, out_dir: Path, n_parts: int) -> PartsPlan | PreparedData:
    """The prepared data when out_dir already holds this very source (as prepare.clean_or_reuse), else the
    groups of source files to clean as parts."""
    fingerprint = source_fingerprint(path)
    meta = cached_meta(out_dir, fingerprint)
    if meta is not None:
        return PreparedData.from_meta(meta)
    return PartsPlan(plan_parts(path, cfg, n_parts), fingerprint)


def plan_parts(path: Path, cfg: Config, n_parts: int) -> list[list[str] | None]:
    """Up to n_parts groups of source files, contiguous in reading order and balanced by bytes; [None] (the
    whole source as one part) for a single file or table, or when data.max_documents caps the corpus."""
    files = source_files(Path(path), cfg.data.format, cfg.data)
    if not files or n_parts <= 1 or cfg.data.max_documents:
        return [None]
    ends = np.cumsum([f.stat().st_size for f in files])
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, n_parts) / n_parts, side="right")
    cuts = np.unique(cuts[(cuts > 0) & (cuts < len(files))])
    return [g.tolist() for g in np.split(np.array([str(f) for f in files], dtype=object), cuts)]


def clean_part(path: Path, cfg: Config, out_dir: Path, files: list[str] | None, index: int) -> Cleaned:
    """Clean one part (every step but dedupe, which needs all parts in order) into its own spill file."""
    no_dedupe = dataclasses.replace(cfg, clean=dataclasses.replace(cfg.clean, dedupe=False))
    return clean_to_spill(path, no_dedupe, out_dir, [Path(f) for f in files] if files is not None else None,
                          spill_name=f".cleaned.part-{index:04d}")


def merge_cleaned(parts: list[Cleaned], cfg: Config, out_dir: Path, path: Path) -> Cleaned:
    """The part spills, in order, deduplicated into one spill file; the clean report is the parts' rows
    summed plus the dedupe row, as clean_to_spill reports for the whole source. Deletes the part spills."""
    dedupe = make_dedupe() if cfg.clean.dedupe else None
    spill = SpillWriter(out_dir / f".cleaned.{os.getpid()}.jsonl")
    dedupe_row = {"step": "dedupe", "docs_removed": 0, "chars_removed": 0, "docs": 0, "chars": 0}
    try:
        for part in parts:
            for docs in read_spill(part.spill):
                if dedupe:
                    kept = dedupe(docs)
                    dedupe_row["docs_removed"] += len(docs) - len(kept)
                    dedupe_row["chars_removed"] += sum(map(len, docs)) - sum(map(len, kept))
                    docs = kept
                if docs:
                    spill.write(docs)
    except BaseException:
        spill.discard()
        raise
    finally:
        for part in parts:
            Path(part.spill).unlink(missing_ok=True)
    report = [{**row, **{k: sum(p.clean_report[i][k] for p in parts) for k in row if k != "step"}}
              for i, row in enumerate(parts[0].clean_report)]
    if dedupe:
        report.append({**dedupe_row, "docs": spill.documents, "chars": spill.chars})
    return finish_cleaning(spill.close(report), path, cfg)


def plan_tokenize(cleaned: Cleaned, cfg: Config, out_dir: Path, n_parts: int) -> tuple[Split, list[EncodeRun]]:
    """The split, the tokenizer (trained once, on the train side, written to out_dir/tokenizer.json), and the
    runs of spill lines to encode as parts."""
    split = plan_split(cleaned, cfg)
    train_tokenizer(cleaned, cfg, out_dir, split)
    return split, plan_encode(cleaned, n_parts)


def plan_encode(cleaned: Cleaned, n_parts: int) -> list[EncodeRun]:
    """Runs of spill lines of about equal document counts."""
    lines = cleaned.lines
    per_part = max(1, -(-len(lines) // max(n_parts, 1)))
    runs, first_doc = [], 0
    for i in range(0, len(lines), per_part):
        chunk = lines[i:i + per_part]
        stop = lines[i + per_part][0] if i + per_part < len(lines) else None
        runs.append(EncodeRun(chunk[0][0], stop, first_doc))
        first_doc += sum(n for _, n in chunk)
    return runs


def encode_part(cleaned: Cleaned, split: Split, out_dir: Path, run: EncodeRun, index: int) -> EncodedPart:
    """Encode one run of spill lines with out_dir/tokenizer.json into part shards, each piece routed by its
    place in the whole corpus's split; returns the part files, their counts and val characters."""
    tok = load_tokenizer(out_dir / "tokenizer.json")
    batches = lambda: read_spill(cleaned.spill, run.start, run.stop)  # noqa: E731
    paths = {n: out_dir / f".part-{index:04d}.{n}.bin" for n in ("train", "val")}
    routed = routed_batches(tok, batches(), split, run.first_doc, last=run.stop is None)
    counts = write_split_files(routed, paths, shard_dtype(tok.get_vocab_size()))
    val_chars = (sum(len(d) for d in split_documents(batches(), split.is_val[run.first_doc:], True))
                 if split.method == "documents" else 0)
    return EncodedPart(paths["train"], paths["val"], counts, val_chars)


def join_shards(cleaned: Cleaned, cfg: Config, out_dir: Path, parts: list[EncodedPart], fingerprint: str,
                split: Split) -> dict:
    """train.bin, val.bin and meta.json from the encoded parts, in order; deletes the parts and the spill."""
    try:
        tok = load_tokenizer(out_dir / "tokenizer.json")
        counts = concat_split_files([{"train": p.train, "val": p.val, "counts": p.counts} for p in parts], out_dir)
        val_chars = (sum(p.val_chars for p in parts) if split.method == "documents"
                     else split.stream_chars - split.cut_char)
        meta = write_prepared_meta(out_dir, tok.get_vocab_size(), counts,
                                   shard_meta(cleaned, cfg, tok, fingerprint, val_chars=val_chars, split=split,
                                              out_dir=out_dir))
    finally:
        remove_spill(cleaned)
    return {**meta, "dir": str(out_dir), "cached": False}
