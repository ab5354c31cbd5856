"""Turn local files into documents, lazily and in batches (one batch per ~1 MB read), so a corpus is never
held whole in memory: plain text (blank-line paragraphs, one per line, or a separator such as
<|endoftext|>), CSV/TSV through pandas (a text column plus an optional row filter), and the IMDB `aclImdb`
tree. Invalid UTF-8 is an error naming the file and byte offset, or replaced with data.encoding_errors=replace."""
from __future__ import annotations

import codecs
from contextlib import nullcontext
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Iterator

import pandas as pd

from lmforge.core.rowfilter import RowFilter, parse as parse_filter
from lmforge.core.errors import LmforgeError
from lmforge.data.tables import choose_column

ENCODING_HINT = "re-encode the file as UTF-8, or --set data.encoding_errors=replace"
CHUNK_BYTES = 1 << 20
TABLE_ROWS = 20_000


def first_bad_utf8(path: Path) -> tuple[int, int] | None:
    """(byte offset, byte value) of the first invalid UTF-8 sequence in path, or None."""
    try:
        for _ in iter_text_chunks(path, "strict"):
            pass
    except LmforgeError as exc:
        return exc.offset, exc.byte  # type: ignore[attr-defined]
    return None


def _encoding_error(path: Path, offset: int, byte: int) -> LmforgeError:
    err = LmforgeError(f"{path} is not valid UTF-8: byte 0x{byte:02x} at offset {offset}", hint=ENCODING_HINT)
    err.offset, err.byte = offset, byte  # type: ignore[attr-defined]
    return err


def iter_text_chunks(path: Path, errors: str = "strict", stream: BinaryIO | None = None) -> Iterator[str]:
    """Decoded text of path (or of `stream`, a decompressed view of it), CHUNK_BYTES at a time; a character split
    across reads is joined correctly."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    offset = 0
    with open(path, "rb") if stream is None else nullcontext(stream) as f:
        while True:
            data = f.read(CHUNK_BYTES)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                # exc.object is the decoder's pending bytes followed by this read
                at = offset - (len(exc.object) - len(data)) + exc.start
                raise _encoding_error(path, at, exc.object[exc.start]) from None
            if offset == 0 and text.startswith("\ufeff"):
                text = text[1:]
            offset += len(data)
            if text:
                yield text
            if not data:
                return


def read_text(path: Path, errors: str = "strict") -> str:
    return "".join(iter_text_chunks(path, errors))


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "imdb" if any(path.glob("**/pos")) or any(path.glob("**/neg")) else "text"
    suffix = path.suffix.lower()
    return {".csv": "csv", ".tsv": "tsv"}.get(suffix, "text")


def split_text(chunks: Iterator[str], fmt: str, separator: str = "") -> Iterator[list[str]]:
    """Documents from a stream of text: split on `separator`, else one per line (fmt "lines"), else on blank
    lines. Stripped; empty ones dropped. One list per chunk read."""
    sep = separator or ("\n" if fmt == "lines" else "\n\n")
    carry = ""
    for chunk in chunks:
        text = carry + chunk
        if not separator:
            text = text.replace("\r\n", "\n")
        parts = text.split(sep)
        carry = parts.pop()
        docs = [s for s in (p.strip() for p in parts) if s]
        if docs:
            yield docs
    if carry.strip():
        yield [carry.strip()]


def read_table(path: Path, fmt: str, column: str, row_filter: str | RowFilter = "",
               errors: str = "strict", stream: BinaryIO | None = None,
               explicit_column: bool = True) -> Iterator[list[str]]:
    """The text column of a CSV/TSV (quoted multi-line fields allowed), TABLE_ROWS rows at a time; only the rows
    `row_filter` keeps (data.filter text, or a parsed RowFilter: lmforge.core.rowfilter, never DataFrame.query).
    `stream`: the file's decompressed bytes (lmforge.data.compressed). No column (or the preset's, absent): the one
    column that holds text (lmforge.data.tables)."""
    sep = "\t" if fmt == "tsv" else ","
    rows = row_filter if isinstance(row_filter, RowFilter) else parse_filter(row_filter) if row_filter else None
    try:
        reader = pd.read_csv(path if stream is None else stream, sep=sep, dtype=str, keep_default_na=False, chunksize=TABLE_ROWS,
                             encoding="utf-8", encoding_errors=errors)
        first = True
        for df in reader:
            if first:
                column = _check_column(path, fmt, column, df, explicit_column)
                first = False
            if rows is not None:
                df = df[rows.mask(df, where=str(path))]
            docs = [s for s in (t.strip() for t in df[column].tolist()) if s]
            if docs:
                yield docs
    except UnicodeDecodeError:
        bad = first_bad_utf8(path) if stream is None else None
        raise _encoding_error(path, *bad) if bad else LmforgeError(f"{path} is not valid UTF-8",
                                                                   hint=ENCODING_HINT) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise LmforgeError(f"cannot parse {path} as {fmt.upper()}: {str(exc).strip()}",
                           hint="check data.format (csv or tsv) matches the file's delimiter") from None


def _check_column(path: Path, fmt: str, column: str, df: pd.DataFrame, explicit: bool = True) -> str:
    if len(df.columns) > 1 and (not column or (column not in df.columns and not explicit)):
        return choose_column(str(path), {str(c): df[c].head(200).tolist() for c in df.columns}, column, explicit)
    if not column:
        raise LmforgeError(f"{path} is a table; name its text column",
                           hint=f"--set data.column=NAME (columns: {', '.join(map(str, df.columns[:12]))})")
    if column not in df.columns:
        other = "tsv" if fmt == "csv" else "csv"
        hint = (f"the file has one column: it may be {other.upper()}; --set data.format={other}"
                if len(df.columns) == 1 else f"columns are: {', '.join(map(str, df.columns[:12]))}")
        raise LmforgeError(f"column {column!r} not found in {path}", hint=hint)
    return column


def source_files(path: Path, fmt: str = "auto") -> list[Path] | None:
    """The files a directory source is read from, in reading order; None for a single file or table."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if not path.is_dir() or fmt in ("csv", "tsv"):
        return None
    if fmt == "imdb":
        return sorted(p for p in path.rglob("*.txt") if p.parent.name in ("pos", "neg", "unsup"))
    return sorted(path.rglob("*.txt"))


def read_imdb_files(files: list[Path], errors: str = "strict", batch: int = 1000) -> Iterator[list[str]]:
    for i in range(0, len(files), batch):
        docs = [s for s in (read_text(p, errors).strip() for p in files[i:i + batch]) if s]
        if docs:
            yield docs


def iter_batches(path: Path, fmt: str = "auto", column: str = "", row_filter: str | RowFilter = "",
                 separator: str = "", errors: str = "strict", files: list[Path] | None = None) -> Iterator[list[str]]:
    """Batches of documents (non-empty, stripped strings) from a local file or directory, read lazily.
    `files` restricts a directory source to some of its source_files (one part of a fanned-out preparation)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if column and fmt not in ("csv", "tsv"):
        raise LmforgeError(f"data.column={column!r} is set but {path} is read as {fmt}, not as a table",
                           hint="--set data.format=csv (or tsv), or --set data.column= for plain text")
    if fmt in ("csv", "tsv"):
        if path.is_dir():
            raise LmforgeError(f"{path} is a directory, not a {fmt.upper()} file", hint="point data.source at the file")
        yield from read_table(path, fmt, column, row_filter, errors)
    elif fmt == "imdb":
        yield from read_imdb_files(source_files(path, fmt) if files is None else files, errors)
    elif path.is_dir():
        for p in source_files(path, fmt) if files is None else files:
            yield from split_text(iter_text_chunks(p, errors), fmt, separator)
    else:
        yield from split_text(iter_text_chunks(path, errors), fmt, separator)


def iter_documents(path: Path, fmt: str = "auto", column: str = "", row_filter: str = "", separator: str = "",
                   errors: str = "strict", limit: int = 0) -> Iterator[str]:
    docs = (d for batch in iter_batches(path, fmt, column, row_filter, separator, errors) for d in batch)
    return islice(docs, limit) if limit else docs


def read_documents(path: Path, fmt: str = "auto", column: str = "", row_filter: str = "",
                   separator: str = "", errors: str = "strict") -> list[str]:
    """All documents as a list (small corpora, tests); raises when there are none."""
    docs = list(iter_documents(path, fmt, column, row_filter, separator, errors))
    if not docs:
        raise LmforgeError(f"no documents found in {path}", hint="point data.source at a non-empty corpus")
    return docs
