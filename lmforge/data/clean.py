"""Clean documents batch by batch, step by step, counting what each step removed (the clean report).
Steps, in order: strip_html, strip_urls, unicode_nfc, normalize_whitespace, lowercase, drop_short, drop_long, dedupe."""
from __future__ import annotations

import re
import unicodedata
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from lmforge.core.config import CleanConfig

HTML_TAG = re.compile(r"<[^<>]{1,200}>")
URL_OR_MENTION = re.compile(r"(?:https?://|www\.)\S+|(?<!\w)@\w+")
IS_SPACE = np.zeros(0x110000, dtype=bool)
IS_SPACE[[c for c in range(0x3001) if chr(c).isspace()]] = True  # what str.split() splits on
IS_SPACE_ASCII = IS_SPACE[:128].copy()


def strip_html(docs: list[str]) -> list[str]:
    return [HTML_TAG.sub(" ", d) if "<" in d else d for d in docs]


def strip_urls(docs: list[str]) -> list[str]:
    """Remove links and @mentions (tweets): near-random characters no language model can predict."""
    return [URL_OR_MENTION.sub(" ", d) if ("/" in d or "@" in d or "www." in d) else d for d in docs]


def unicode_nfc(docs: list[str]) -> list[str]:
    return [unicodedata.normalize("NFC", d) for d in docs]


def normalize_whitespace_one(doc: str) -> str:
    """Strip; a whitespace run holding a newline becomes one newline, any other run one space."""
    return "\n".join(x for x in (" ".join(line.split()) for line in doc.split("\n")) if x)


def normalize_whitespace(docs: list[str]) -> list[str]:
    """normalize_whitespace_one on each document, fast: numpy finds the few documents that would change (a
    whitespace character other than space or newline, two in a row, or one at either end) and only those
    are rewritten in Python."""
    text = "".join(docs)
    if not text:
        return docs
    if text.isascii():
        cps = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        ws = IS_SPACE_ASCII[cps]
    else:
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ws = IS_SPACE[cps]
    suspect = ws & (cps != 32) & (cps != 10)
    suspect[1:] |= ws[1:] & ws[:-1]
    lens = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    ends = np.cumsum(lens)
    nonempty = np.flatnonzero(lens)
    at_edge = ws[ends[nonempty] - lens[nonempty]] | ws[ends[nonempty] - 1]
    fix = set(nonempty[at_edge].tolist())
    fix.update(np.searchsorted(ends, np.flatnonzero(suspect), side="right").tolist())
    if not fix:
        return docs
    out = list(docs)
    for i in fix:
        out[i] = normalize_whitespace_one(docs[i])
    return out


def lowercase(docs: list[str]) -> list[str]:
    return [d.lower() for d in docs]


def make_dedupe() -> Callable[[list[str]], list[str]]:
    """A filter that drops every document seen before by this filter (exact match)."""
    seen: set[int] = set()  # 64-bit hashes of the documents kept so far: ~70 bytes per unique document

    def dedupe(docs: list[str]) -> list[str]:
        hashes = pd.util.hash_array(np.array(docs, dtype=object)).tolist() if docs else []
        keep = []
        for d, h in zip(docs, hashes):
            if h not in seen:
                seen.add(h)
                keep.append(d)
        return keep

    return dedupe


def build_steps(cfg: CleanConfig) -> list[tuple[str, Callable[[list[str]], list[str]]]]:
    steps: list[tuple[str, Callable[[list[str]], list[str]]]] = []
    if cfg.strip_html:
        steps.append(("strip_html", strip_html))
    if cfg.strip_urls:
        steps.append(("strip_urls", strip_urls))
    if cfg.unicode_nfc:
        steps.append(("unicode_nfc", unicode_nfc))
    if cfg.normalize_whitespace:
        steps.append(("normalize_whitespace", normalize_whitespace))
    if cfg.lowercase:
        steps.append(("lowercase", lowercase))
    min_chars = max(cfg.min_chars, 1)
    steps.append(("drop_short", lambda docs: [d for d in docs if len(d) >= min_chars]))
    if cfg.max_chars:
        steps.append(("drop_long", lambda docs: [d for d in docs if len(d) <= cfg.max_chars]))
    if cfg.dedupe:
        steps.append(("dedupe", make_dedupe()))
    return steps


def clean_batches(batches: Iterable[list[str]], cfg: CleanConfig, report: list[dict]) -> Iterator[list[str]]:
    """Clean a stream of document batches. `report` is filled with one row per step (step, docs_removed,
    chars_removed, docs and chars left), complete once the stream is exhausted."""
    steps = build_steps(cfg)
    rows = [{"step": name, "docs_removed": 0, "chars_removed": 0, "docs": 0, "chars": 0} for name, _ in steps]
    report[:] = rows
    for docs in batches:
        chars = sum(map(len, docs))
        for row, (_, step) in zip(rows, steps):
            before_docs, before_chars = len(docs), chars
            docs = step(docs)
            chars = sum(map(len, docs))
            row["docs_removed"] += before_docs - len(docs)
            row["chars_removed"] += before_chars - chars
            row["docs"] += len(docs)
            row["chars"] += chars
        if docs:
            yield docs


def clean_documents(docs: list[str], cfg: CleanConfig) -> tuple[list[str], list[dict]]:
    """Clean a list of documents in one batch; returns (documents, report)."""
    report: list[dict] = []
    out = [d for batch in clean_batches([docs], cfg, report) for d in batch]
    return out, report
