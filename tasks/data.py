"""Data tasks: acquire the source, read and clean documents, tokenize and shard."""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from lmforge import tracking
from lmforge.config import Config
from lmforge.data.prepare import cached_meta, check_fits_context, clean_to_spill, source_fingerprint, tokenize_and_shard
from lmforge.data.sources import acquire
from lmforge.layout import RunLayout
from tasks import retry_unless_user_error


@task(name="acquire", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_unless_user_error)
def acquire_data(cfg: Config, cache_dir: Path) -> Path:
    path = acquire(cfg.data.source, cache_dir, cfg.data.sha256)
    get_run_logger().info("corpus at %s", path)
    return path


@task(name="clean")
def clean_data(path: Path, cfg: Config, run_id: str | None = None) -> dict:
    """Read and clean into the prepared-data directory's spill file, or find that directory already prepared
    from this very source (same fingerprint) and skip the work."""
    out_dir = RunLayout.for_config(cfg).data
    fingerprint = source_fingerprint(path)
    logger = get_run_logger()
    meta = cached_meta(out_dir, fingerprint)
    if meta:
        logger.info("reusing prepared data in %s (source unchanged)", out_dir)
        cleaned = {"cached_meta": meta, "clean_report": meta.get("clean_report", []),
                   "documents": meta["documents"], "chars": meta["chars"]}
    else:
        cleaned = {**clean_to_spill(path, cfg, out_dir), "fingerprint": fingerprint}
    report = cleaned["clean_report"]
    for row in report:
        logger.info("clean %(step)s: -%(docs_removed)d docs, -%(chars_removed)d chars -> %(docs)d docs", row)
    if run_id:
        tracking.log_text(run_id, _report_table(report), "data/clean_report.md")
        tracking.log_metrics(run_id, {"data_documents": cleaned["documents"], "data_chars": cleaned["chars"]})
    return cleaned


def _report_table(report: list[dict]) -> str:
    lines = ["| step | docs removed | chars removed | docs | chars |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['step']} | {r['docs_removed']} | {r['chars_removed']} | {r['docs']} | {r['chars']} |"
              for r in report]
    return "\n".join(lines) + "\n"


@task(name="tokenize")
def tokenize_data(cleaned: dict, cfg: Config, out_dir: Path, run_id: str | None = None) -> dict:
    meta = cleaned.get("cached_meta") or tokenize_and_shard(cleaned, cfg, out_dir, cleaned["fingerprint"])
    check_fits_context(meta, cfg.model.block_size)
    get_run_logger().info("%d train / %d val tokens, vocabulary %d", meta["train"]["tokens"],
                          meta["val"]["tokens"], meta["vocab_size"])
    if run_id:
        tracking.log_metrics(run_id, {"train_tokens": meta["train"]["tokens"], "val_tokens": meta["val"]["tokens"],
                                      "vocab_size": meta["vocab_size"]})
        tracking.log_artifact(run_id, out_dir / "tokenizer.json", "tokenizer")
    return meta
