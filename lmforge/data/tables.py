"""What every table reader (CSV/TSV, JSON lines, Parquet, Arrow) shares: which column holds the text, and the
errors that name the columns.

data.column empty: the text column is the one column that holds text, judged on the first rows read: a column of
strings, not all numbers, some of which have a space between words (an ID, a date, a country or a label has
none). None or several: one error line that lists them. data.column from the preset (not set by the user) that
the table lacks: the same choice, with a warning, so a preset's column name never blocks a user's own table."""
from __future__ import annotations

import logging
import re
from typing import Iterable, Sequence

from lmforge.core.errors import LmforgeError
from lmforge.core.rowfilter import RowFilter

log = logging.getLogger("lmforge.data")

_WORDS = re.compile(r"\S\s+\S")
_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")
MAX_COLUMNS_SHOWN = 12


def holds_text(values: Iterable) -> bool:
    """True when the sample looks like prose: strings, not all numbers, some with a space between words."""
    seen = words = False
    for v in values:
        if v is None or v == "":
            continue
        if not isinstance(v, str):
            return False
        seen = True
        if _NUMBER.fullmatch(v):
            continue
        words = words or bool(_WORDS.search(v.strip()))
    return seen and words


def shown(columns: Sequence) -> str:
    cols = [str(c) for c in columns]
    return ", ".join(cols[:MAX_COLUMNS_SHOWN]) + (f", ... ({len(cols)} in all)" if len(cols) > MAX_COLUMNS_SHOWN else "")


def choose_column(where: str, samples: dict[str, list], column: str = "", explicit: bool = True,
                  kind: str = "column", key_hint: str = "") -> str:
    """The text column of a table whose first rows are `samples` (column -> values): `column` when it is there;
    else, when it is empty or only the preset's, the one column that holds text; else one error line."""
    names = list(samples)
    if column and column in samples:
        return column
    if column and explicit:
        raise LmforgeError(f"{kind} {column!r} not found in {where}", hint=f"{kind}s are: {shown(names)}")
    text = [c for c in names if holds_text(samples[c])]
    if len(text) == 1:
        if column:
            log.warning("%s has no %s %r (the preset's data.column); reading its one text %s %r instead "
                        "(hint: --set data.column=NAME to choose)", where, kind, column, kind, text[0])
        else:
            log.info("reading the text %s %r of %s (the only one that holds text)", kind, text[0], where)
        return text[0]
    missing = f"has no {kind} {column!r} and " if column else ""
    if not text:
        raise LmforgeError(f"{where} {missing}has no {kind} that holds text (strings with words)",
                           hint=f"--set data.column=NAME{key_hint} ({kind}s: {shown(names)})")
    raise LmforgeError(f"{where} {missing}has {len(text)} {kind}s that hold text: {shown(text)}; name one",
                       hint=f"--set data.column=NAME{key_hint} (text {kind}s: {shown(text)})")


def filter_columns(rows: RowFilter | None) -> list[str]:
    """The column names a row filter reads, in first-use order (what a columnar reader must load beside the text)."""
    if rows is None:
        return []
    import ast

    out: list[str] = []
    for part in rows.parts:
        for node in ast.walk(part.tree):
            if isinstance(node, ast.Name):
                name = part.quoted.get(node.id, node.id)
                if name not in out:
                    out.append(name)
    return out


def not_text(where: str, column: str, type_name: str, kind: str = "column") -> LmforgeError:
    return LmforgeError(f"{kind} {column!r} of {where} holds {type_name}, not text",
                        hint=f"--set data.column=NAME to name a {kind} of strings")
