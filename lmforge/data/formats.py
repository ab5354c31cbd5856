"""Turn local files into documents: plain text (blank-line paragraphs, one per line, or a separator),
CSV/TSV through pandas (a text column plus an optional row filter), and the IMDB `aclImdb` tree."""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from lmforge.errors import LmforgeError

ENCODING_HINT = "re-encode the file as UTF-8, or --set data.encoding_errors=replace"


def read_text(path: Path, errors: str = "strict") -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise LmforgeError(f"{path} is not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}",
                           hint=ENCODING_HINT) from None


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "imdb" if any(path.glob("**/pos")) or any(path.glob("**/neg")) else "text"
    suffix = path.suffix.lower()
    return {".csv": "csv", ".tsv": "tsv"}.get(suffix, "text")


def split_text(text: str, fmt: str, separator: str = "") -> list[str]:
    if separator:
        parts = text.split(separator)
    elif fmt == "lines":
        parts = text.splitlines()
    else:
        parts = text.replace("\r\n", "\n").split("\n\n")
    return [p.strip() for p in parts if p.strip()]


def read_table(path: Path, fmt: str, column: str, row_filter: str = "", errors: str = "strict") -> list[str]:
    sep = "\t" if fmt == "tsv" else ","
    text = read_text(path, errors)
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise LmforgeError(f"cannot parse {path} as {fmt.upper()}: {str(exc).strip()}",
                           hint="check data.format (csv or tsv) matches the file's delimiter") from None
    if not column:
        raise LmforgeError(f"{path} is a table; name its text column",
                           hint=f"--set data.column=NAME (columns: {', '.join(map(str, df.columns[:12]))})")
    if column not in df.columns:
        other = "tsv" if fmt == "csv" else "csv"
        hint = (f"the file has one column: it may be {other.upper()}; --set data.format={other}"
                if len(df.columns) == 1 else f"columns are: {', '.join(map(str, df.columns[:12]))}")
        raise LmforgeError(f"column {column!r} not found in {path}", hint=hint)
    if row_filter:
        try:
            df = df.query(row_filter)
        except Exception as exc:  # pandas raises many types for a bad expression
            raise LmforgeError(f"data.filter {row_filter!r} failed on {path}: {exc}",
                               hint='e.g. --set data.filter=\'Country == "lebanon"\'') from None
    return [t.strip() for t in df[column].tolist() if t and t.strip()]


def read_imdb_tree(root: Path, errors: str = "strict") -> list[str]:
    files = sorted(p for p in root.rglob("*.txt") if p.parent.name in ("pos", "neg", "unsup"))
    return [read_text(p, errors).strip() for p in files]


def read_documents(path: Path, fmt: str = "auto", column: str = "", row_filter: str = "",
                   separator: str = "", errors: str = "strict") -> list[str]:
    """Documents (non-empty strings) from a local file or directory."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt in ("csv", "tsv"):
        docs = read_table(path, fmt, column, row_filter, errors)
    elif fmt == "imdb":
        docs = read_imdb_tree(path, errors)
    elif path.is_dir():
        docs = [d for p in sorted(path.rglob("*.txt")) for d in split_text(read_text(p, errors), fmt, separator)]
    else:
        docs = split_text(read_text(path, errors), fmt, separator)
    if not docs:
        raise LmforgeError(f"no documents found in {path}", hint="point data.source at a non-empty corpus")
    return docs
