"""Data tasks: acquire the source, read and clean documents, tokenize and shard; or the same in parts."""
from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

from prefect import get_run_logger, task

from lmforge.registry import tracking
from lmforge.core.config import Config
from lmforge.data.partition import clean_part, encode_part, join_shards, merge_cleaned, plan_or_reuse, plan_tokenize
from lmforge.data.prepare import Split, check_fits_context, clean_or_reuse, clean_report_markdown, tokenize_and_shard
from lmforge.data.snapshot import snapshot
from lmforge.data.sources import acquire_for
from lmforge.core.layout import RunLayout
from lmforge.core.policy import Policy
from lmforge.core.records import Cleaned, EncodedPart, EncodeRun, PartsPlan, PreparedData, StartFrom
from lmforge.core.redact import redact_text
from lmforge.tasks import retry_unless_user_error


@task(name="acquire", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_unless_user_error)
def acquire_data(cfg: Config, cache_dir: Path, policy: Policy | None = None) -> Path:
    path = acquire_for(cfg.data, cache_dir, policy)  # within the operator's policy and the config's limits
    get_run_logger().info("corpus at %s", redact_text(str(path)))
    return path


def _log_clean(cleaned: Cleaned | PreparedData, run_id: str | None) -> None:
    logger = get_run_logger()
    if isinstance(cleaned, PreparedData):
        logger.info("reusing prepared data in %s (source unchanged)", cleaned.dir)
    for row in cleaned.clean_report:
        logger.info("clean %(step)s: -%(docs_removed)d docs, -%(chars_removed)d chars -> %(docs)d docs", row)
    if run_id:
        tracking.log_text(run_id, clean_report_markdown(cleaned.clean_report), "data/clean_report.md")
        tracking.log_metrics(run_id, {"data_documents": cleaned.documents, "data_chars": cleaned.chars})


def _prepared(data: PreparedData, cfg: Config, run_id: str | None) -> PreparedData:
    """Check the prepared data fits the model's context, log it, and hand it on."""
    logger = get_run_logger()
    if data.split.get("note"):
        logger.info(data.split["note"])
    check_fits_context(data, cfg.model.block_size)
    logger.info("%d train / %d val tokens, vocabulary %d", data.train_tokens, data.val_tokens, data.vocab_size)
    if run_id:
        tracking.log_metrics(run_id, {"train_tokens": data.train_tokens, "val_tokens": data.val_tokens,
                                      "vocab_size": data.vocab_size})
        tracking.log_artifact(run_id, data.tokenizer_file, "tokenizer")
    return data


@task(name="clean")
def clean_data(path: Path, cfg: Config, out_dir: Path, run_id: str | None = None) -> Cleaned | PreparedData:
    """Read and clean into the prepared-data directory's spill file, or find that directory already prepared
    from this very source and skip the work."""
    cleaned = clean_or_reuse(path, cfg, out_dir)
    _log_clean(cleaned, run_id)
    return cleaned


@task(name="tokenize")
def tokenize_data(cleaned: Cleaned | PreparedData, cfg: Config, out_dir: Path, run_id: str | None = None
                  ) -> PreparedData:
    """Tokenize and shard the cleaned spill (prepared data found by the clean step is handed on as it is)."""
    if not isinstance(cleaned, PreparedData):
        cleaned = PreparedData.from_meta(tokenize_and_shard(cleaned, cfg, out_dir, cleaned.fingerprint))
    return _prepared(cleaned, cfg, run_id)


# Fanned out (data.parts > 1): plan -> clean parts -> merge -> tokenizer -> encode parts -> join.

def _where() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@task(name="plan-parts")
def plan_data_parts(path: Path, cfg: Config, out_dir: Path, run_id: str | None = None) -> PartsPlan | PreparedData:
    """The reuse check of clean; otherwise the groups of source files to clean as parts."""
    plan = plan_or_reuse(path, cfg, out_dir, cfg.data.parts)
    if isinstance(plan, PreparedData):
        _log_clean(plan, run_id)
    else:
        get_run_logger().info("cleaning in %d part(s), encoding in up to %d", len(plan.parts), cfg.data.parts)
    return plan


@task(name="clean-part")
def clean_data_part(path: Path, cfg: Config, out_dir: Path, files: list[str] | None, index: int) -> Cleaned:
    cleaned = clean_part(path, cfg, out_dir, files, index)
    get_run_logger().info("part %d: %d documents cleaned on %s", index, cleaned.documents, _where())
    return dataclasses.replace(cleaned, ran_on=(_where(),))


@task(name="merge-cleaned")
def merge_cleaned_parts(parts: list[Cleaned], cfg: Config, out_dir: Path, path: Path, fingerprint: str,
                        run_id: str | None = None) -> Cleaned:
    cleaned = merge_cleaned(parts, cfg, out_dir, path)
    _log_clean(cleaned, run_id)
    return dataclasses.replace(cleaned, fingerprint=fingerprint, ran_on=tuple(sorted({w for p in parts
                                                                                      for w in p.ran_on})))


@task(name="train-tokenizer")
def train_data_tokenizer(cleaned: Cleaned, cfg: Config, out_dir: Path) -> tuple[Split, list[EncodeRun]]:
    """The split and the tokenizer (written); returns (split, the runs of spill lines to encode as parts)."""
    return plan_tokenize(cleaned, cfg, out_dir, cfg.data.parts)


@task(name="encode-part")
def encode_data_part(cleaned: Cleaned, split: Split, out_dir: Path, run: EncodeRun, index: int) -> EncodedPart:
    encoded = encode_part(cleaned, split, out_dir, run, index)
    get_run_logger().info("part %d: %d train + %d val tokens encoded on %s", index,
                          encoded.counts["train"]["tokens"], encoded.counts["val"]["tokens"], _where())
    return dataclasses.replace(encoded, ran_on=_where())


@task(name="join-shards")
def join_data_shards(cleaned: Cleaned, cfg: Config, out_dir: Path, split: Split, parts: list[EncodedPart],
                     run_id: str | None = None) -> PreparedData:
    meta = join_shards(cleaned, cfg, out_dir, parts, cleaned.fingerprint, split)
    ran_on = sorted({*cleaned.ran_on, *(p.ran_on for p in parts)})
    return _prepared(dataclasses.replace(PreparedData.from_meta(meta), ran_on=ran_on), cfg, run_id)


@task(name="snapshot-data")
def snapshot_data(prepared: PreparedData, layout: RunLayout, start: StartFrom | None = None,
                  run_id: str | None = None) -> PreparedData:
    """The run's own links to the prepared files it trains on (lmforge.data.snapshot): its data from here on.
    `start`: where the run's weights start (tasks.train.resolve_start), part of which run directory it is."""
    run = layout.run_dir(prepared.fingerprint, start)
    data = snapshot(prepared, run.data)
    get_run_logger().info("data %s (fingerprint %s) in %s", data.corpus_sha256[:12], data.fingerprint[:12], run.data)
    if run_id:
        tracking.set_tags(run_id, {"data_fingerprint": data.fingerprint, "run_dir": str(run.root)})
    return data
