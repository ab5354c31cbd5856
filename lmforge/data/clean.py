"""Clean documents with pandas, step by step, reporting what each step removed."""
from __future__ import annotations

import pandas as pd

from lmforge.config import CleanConfig

HTML_TAG = r"<[^>]{1,200}>"


def clean_documents(docs: list[str], cfg: CleanConfig) -> tuple[list[str], list[dict]]:
    """Apply the configured steps in order; return the cleaned documents and one report row per step
    (step, documents removed, characters removed, documents and characters left)."""
    s = pd.Series(docs, dtype="string")
    steps: list[tuple[str, object]] = []
    if cfg.strip_html:
        steps.append(("strip_html", lambda x: x.str.replace(HTML_TAG, " ", regex=True)))
    if cfg.unicode_nfc:
        steps.append(("unicode_nfc", lambda x: x.str.normalize("NFC")))
    if cfg.normalize_whitespace:
        steps.append(("normalize_whitespace",
                      lambda x: x.str.replace(r"[ \t\u00a0]+", " ", regex=True)
                      .str.replace(r"\s*\n\s*", "\n", regex=True).str.strip()))
    if cfg.lowercase:
        steps.append(("lowercase", lambda x: x.str.lower()))
    steps.append(("drop_short", lambda x: x[x.str.len() >= max(cfg.min_chars, 1)]))
    if cfg.max_chars:
        steps.append(("drop_long", lambda x: x[x.str.len() <= cfg.max_chars]))
    if cfg.dedupe:
        steps.append(("dedupe", lambda x: x.drop_duplicates()))
    report = []
    for name, step in steps:
        before_docs, before_chars = len(s), int(s.str.len().sum())
        s = step(s)  # type: ignore[operator]
        chars = int(s.str.len().sum())
        report.append({"step": name, "docs_removed": before_docs - len(s), "chars_removed": before_chars - chars,
                       "docs": len(s), "chars": chars})
    return s.tolist(), report
