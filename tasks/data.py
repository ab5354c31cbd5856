"""Data tasks: acquire the source, read and clean documents, tokenize and shard."""
from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from lmforge import tracking
from lmforge.config import Config
from lmforge.data.clean import clean_documents
from lmforge.data.formats import read_documents
from lmforge.data.prepare import tokenize_and_shard
from lmforge.data.sources import acquire
from tasks import retry_unless_user_error


@task(name="acquire", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_unless_user_error)
def acquire_data(cfg: Config, cache_dir: Path) -> Path:
    path = acquire(cfg.data.source, cache_dir, cfg.data.sha256)
    get_run_logger().info("corpus at %s", path)
    return path


@task(name="clean")
def clean_data(path: Path, cfg: Config, run_id: str | None = None) -> list[str]:
    d = cfg.data
    docs = read_documents(path, d.format, d.column, d.filter, d.separator, d.encoding_errors)
    if d.max_documents:
        docs = docs[:d.max_documents]
    docs, report = clean_documents(docs, cfg.clean)
    logger = get_run_logger()
    for row in report:
        logger.info("clean %(step)s: -%(docs_removed)d docs, -%(chars_removed)d chars -> %(docs)d docs", row)
    if run_id:
        tracking.log_text(run_id, _report_table(report), "data/clean_report.md")
        tracking.log_metrics(run_id, {"data_documents": len(docs), "data_chars": sum(map(len, docs))})
    return docs


def _report_table(report: list[dict]) -> str:
    lines = ["| step | docs removed | chars removed | docs | chars |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['step']} | {r['docs_removed']} | {r['chars_removed']} | {r['docs']} | {r['chars']} |"
              for r in report]
    return "\n".join(lines) + "\n"


@task(name="tokenize")
def tokenize_data(docs: list[str], cfg: Config, out_dir: Path, run_id: str | None = None) -> dict:
    meta = tokenize_and_shard(docs, cfg, out_dir)
    get_run_logger().info("%d train / %d val tokens, vocabulary %d", meta["train"]["tokens"],
                          meta["val"]["tokens"], meta["vocab_size"])
    if run_id:
        tracking.log_metrics(run_id, {"train_tokens": meta["train"]["tokens"], "val_tokens": meta["val"]["tokens"],
                                      "vocab_size": meta["vocab_size"]})
        tracking.log_artifact(run_id, out_dir / "tokenizer.json", "tokenizer")
    return meta
