"""Data tasks: acquire the source, read and clean documents, tokenize and shard; or the same in parts."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from prefect import get_run_logger, task

from lmforge import tracking
from lmforge.config import Config
from lmforge.data.partition import clean_part, encode_part, join_shards, merge_cleaned, plan_parts, plan_tokenize
from lmforge.data.prepare import (cached_meta, check_fits_context, clean_to_spill, finish_cleaning, source_fingerprint,
                                  tokenize_and_shard)
from lmforge.data.snapshot import snapshot
from lmforge.data.sources import acquire_for
from lmforge.layout import RunLayout
from lmforge.redact import redact_text
from tasks import retry_unless_user_error


@task(name="acquire", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_unless_user_error)
def acquire_data(cfg: Config, cache_dir: Path) -> Path:
    path = acquire_for(cfg.data, cache_dir)  # data.max_bytes and data.archive_max_* bound what arrives
    get_run_logger().info("corpus at %s", redact_text(str(path)))
    return path


def _reuse_prepared(path: Path, cfg: Config) -> tuple[dict | None, str]:
    """(what clean returns when the prepared-data directory already holds this very source, or None; the
    source fingerprint)."""
    out_dir = RunLayout.for_config(cfg).prepared
    fingerprint = source_fingerprint(path)
    meta = cached_meta(out_dir, fingerprint)
    if not meta:
        return None, fingerprint
    get_run_logger().info("reusing prepared data in %s (source unchanged)", out_dir)
    return {"cached_meta": meta, "clean_report": meta.get("clean_report", []), "documents": meta["documents"],
            "chars": meta["chars"]}, fingerprint


def _log_clean(cleaned: dict, run_id: str | None) -> None:
    report = cleaned["clean_report"]
    for row in report:
        get_run_logger().info("clean %(step)s: -%(docs_removed)d docs, -%(chars_removed)d chars -> %(docs)d docs", row)
    if run_id:
        tracking.log_text(run_id, _report_table(report), "data/clean_report.md")
        tracking.log_metrics(run_id, {"data_documents": cleaned["documents"], "data_chars": cleaned["chars"]})


def _report_table(report: list[dict]) -> str:
    lines = ["| step | docs removed | chars removed | docs | chars |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['step']} | {r['docs_removed']} | {r['chars_removed']} | {r['docs']} | {r['chars']} |"
              for r in report]
    return "\n".join(lines) + "\n"


def _log_shards(meta: dict, cfg: Config, out_dir: Path, run_id: str | None) -> dict:
    if meta["split"].get("note"):
        get_run_logger().info(meta["split"]["note"])
    check_fits_context(meta, cfg.model.block_size)
    get_run_logger().info("%d train / %d val tokens, vocabulary %d", meta["train"]["tokens"],
                          meta["val"]["tokens"], meta["vocab_size"])
    if run_id:
        tracking.log_metrics(run_id, {"train_tokens": meta["train"]["tokens"], "val_tokens": meta["val"]["tokens"],
                                      "vocab_size": meta["vocab_size"]})
        tracking.log_artifact(run_id, out_dir / "tokenizer.json", "tokenizer")
    return meta


@task(name="clean")
def clean_data(path: Path, cfg: Config, run_id: str | None = None) -> dict:
    """Read and clean into the prepared-data directory's spill file, or find that directory already prepared
    from this very source (same fingerprint) and skip the work."""
    cleaned, fingerprint = _reuse_prepared(path, cfg)
    if cleaned is None:
        out_dir = RunLayout.for_config(cfg).prepared
        cleaned = {**finish_cleaning(clean_to_spill(path, cfg, out_dir), path, cfg), "fingerprint": fingerprint}
    _log_clean(cleaned, run_id)
    return cleaned


@task(name="tokenize")
def tokenize_data(cleaned: dict, cfg: Config, out_dir: Path, run_id: str | None = None) -> dict:
    meta = cleaned.get("cached_meta") or tokenize_and_shard(cleaned, cfg, out_dir, cleaned["fingerprint"])
    return _log_shards(meta, cfg, out_dir, run_id)


# Fanned out (data.parts > 1): plan -> clean parts -> merge -> tokenizer -> encode parts -> join.

def _where() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@task(name="plan-parts")
def plan_data_parts(path: Path, cfg: Config, run_id: str | None = None) -> dict:
    """The reuse check of clean; otherwise the groups of source files to clean as parts."""
    cleaned, fingerprint = _reuse_prepared(path, cfg)
    if cleaned is not None:
        _log_clean(cleaned, run_id)
        return cleaned
    parts = plan_parts(path, cfg, cfg.data.parts)
    get_run_logger().info("cleaning in %d part(s), encoding in up to %d", len(parts), cfg.data.parts)
    return {"parts": parts, "fingerprint": fingerprint}


@task(name="clean-part")
def clean_data_part(path: Path, cfg: Config, out_dir: Path, files: list[str] | None, index: int) -> dict:
    cleaned = clean_part(path, cfg, out_dir, files, index)
    get_run_logger().info("part %d: %d documents cleaned on %s", index, cleaned["documents"], _where())
    return {**cleaned, "ran_on": _where()}


@task(name="merge-cleaned")
def merge_cleaned_parts(parts: list[dict], cfg: Config, out_dir: Path, path: Path, fingerprint: str,
                        run_id: str | None = None) -> dict:
    cleaned = merge_cleaned(parts, cfg, out_dir, path)
    _log_clean(cleaned, run_id)
    return {**cleaned, "fingerprint": fingerprint, "ran_on": sorted({p["ran_on"] for p in parts})}


@task(name="train-tokenizer")
def train_data_tokenizer(cleaned: dict, cfg: Config, out_dir: Path) -> tuple:
    """The split and the tokenizer (written); returns (split, the runs of spill lines to encode as parts)."""
    return plan_tokenize(cleaned, cfg, out_dir, cfg.data.parts)


@task(name="encode-part")
def encode_data_part(cleaned: dict, split, out_dir: Path, run: dict, index: int) -> dict:
    encoded = encode_part(cleaned, split, out_dir, run, index)
    get_run_logger().info("part %d: %d train + %d val tokens encoded on %s", index,
                          encoded["counts"]["train"]["tokens"], encoded["counts"]["val"]["tokens"], _where())
    return {**encoded, "ran_on": _where()}


@task(name="join-shards")
def join_data_shards(cleaned: dict, cfg: Config, out_dir: Path, split, parts: list[dict],
                     run_id: str | None = None) -> dict:
    meta = join_shards(cleaned, cfg, out_dir, parts, cleaned["fingerprint"], split)
    ran_on = sorted({*cleaned["ran_on"], *(p["ran_on"] for p in parts)})
    return {**_log_shards(meta, cfg, out_dir, run_id), "ran_on": ran_on}


@task(name="snapshot-data")
def snapshot_data(meta: dict, layout: RunLayout, run_id: str | None = None) -> dict:
    """The run's own links to the prepared files it trains on (lmforge.data.snapshot): its data from here on."""
    run = layout.run_dir(meta["data_fingerprint"])
    data = snapshot(meta, run.data)
    get_run_logger().info("data %s (fingerprint %s) in %s", data["corpus_sha256"][:12], data["data_fingerprint"][:12],
                          run.data)
    if run_id:
        tracking.set_tags(run_id, {"data_fingerprint": data["data_fingerprint"], "run_dir": str(run.root)})
    return data
