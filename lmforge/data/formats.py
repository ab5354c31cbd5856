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

from lmforge.core.config import DataConfig
from lmforge.core.rowfilter import RowFilter, parse as parse_filter
from lmforge.core.errors import LmforgeError
from lmforge.data.bounded import lf, open_regular, split_documents, table_rows, too_long
from lmforge.data.tables import choose_column

ENCODING_HINT = "re-encode the file as UTF-8, or --set data.encoding_errors=replace"
CHUNK_BYTES = 1 << 20
TABLE_ROWS = 20_000
MAX_RECORD_CHARS = DataConfig.max_record_chars  # a document, line, field or row: data.max_record_chars


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
    """Decoded text of path (or of `stream`, a decompressed view of it: lmforge.data.compressed), CHUNK_BYTES at a
    time; a character split across reads is joined correctly."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    offset = 0
    with open_regular(path) if stream is None else nullcontext(stream) as f:
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


def split_text(chunks: Iterator[str], fmt: str, separator: str = "", max_chars: int = MAX_RECORD_CHARS,
               where: object = "text") -> Iterator[list[str]]:
    """Documents from a stream of text: split on `separator`, else one per line (fmt "lines"), else on blank
    lines. Stripped; empty ones dropped. One list per chunk read. Linear in the text (lmforge.data.bounded); a
    document over `max_chars` characters is an error naming `where`."""
    sep = separator or ("\n" if fmt == "lines" else "\n\n")
    for pieces in split_documents(chunks if separator else lf(chunks), sep, max_chars, where):
        docs = [s for s in (p.strip() for p in pieces) if s]
        if docs:
            yield docs


def read_table(path: Path, fmt: str, column: str, row_filter: str | RowFilter = "",
               errors: str = "strict", max_chars: int = MAX_RECORD_CHARS, *, stream: BinaryIO | None = None,
               explicit_column: bool = True) -> Iterator[list[str]]:
    """The text column of a CSV/TSV (quoted multi-line fields allowed), TABLE_ROWS rows at a time; only the rows
    `row_filter` keeps (data.filter text, or a parsed RowFilter: lmforge.core.rowfilter, never DataFrame.query).
    Rows come from lmforge.data.bounded.table_rows: a row over `max_chars` characters is an error, not a hang.
    `stream`: the file's decompressed bytes (lmforge.data.compressed). No data.column (or only the preset's, which
    the table lacks): the one column that holds text, judged on the first batch (lmforge.data.tables)."""
    rows = row_filter if isinstance(row_filter, RowFilter) else parse_filter(row_filter) if row_filter else None
    try:
        with open_regular(path) if stream is None else nullcontext(stream) as raw:
            parsed = table_rows(raw, "\t" if fmt == "tsv" else ",", max_chars, errors, path)
            header = next(parsed, None)
            choose = len(header or []) > 1 and (not column or (column not in header and not explicit_column))
            columns = _columns(path, fmt, "" if choose else column, header, check=not choose)
            while batch := list(islice(parsed, TABLE_ROWS)):
                df = _frame(path, fmt, columns, batch)
                if choose:
                    column = choose_column(str(path), {c: df[c].head(200).tolist() for c in columns}, column,
                                           explicit_column)
                    choose = False
                if rows is not None:
                    df = df[rows.mask(df, where=str(path))]
                docs = [s for s in (t.strip() for t in df[column].tolist()) if s]
                if docs:
                    yield docs
    except UnicodeDecodeError:
        bad = first_bad_utf8(path) if stream is None else None
        raise _encoding_error(path, *bad) if bad else LmforgeError(f"{path} is not valid UTF-8",
                                                                   hint=ENCODING_HINT) from None


def _columns(path: Path, fmt: str, column: str, header: list[str] | None, check: bool = True) -> list[str]:
    """The header's names (a repeated name gets .1, .2, ... as pandas names them), checked for `column`."""
    if header is None:
        raise LmforgeError(f"cannot parse {path} as {fmt.upper()}: it has no header row",
                           hint="the first row names the columns, e.g. text,label")
    names: list[str] = []
    for name in header:
        n, unique = 0, name
        while unique in names:
            n += 1
            unique = f"{name}.{n}"
        names.append(unique)
    if check:
        _check_column(path, fmt, column, names)
    return names


def _frame(path: Path, fmt: str, columns: list[str], batch: list[list[str]]) -> pd.DataFrame:
    """Rows as a text DataFrame; a short row is padded with empty cells, a long one is a parse error."""
    width = len(columns)
    for row in batch:
        if len(row) > width:
            raise LmforgeError(f"cannot parse {path} as {fmt.upper()}: a row has {len(row)} fields, the header "
                               f"{width}", hint="check data.format (csv or tsv) matches the file's delimiter")
        if len(row) < width:
            row.extend([""] * (width - len(row)))
    return pd.DataFrame(batch, columns=columns, dtype=object)


def _check_column(path: Path, fmt: str, column: str, columns: list[str]) -> None:
    if not column:
        raise LmforgeError(f"{path} is a table; name its text column",
                           hint=f"--set data.column=NAME (columns: {', '.join(map(str, columns[:12]))})")
    if column not in columns:
        other = "tsv" if fmt == "csv" else "csv"
        hint = (f"the file has one column: it may be {other.upper()}; --set data.format={other}"
                if len(columns) == 1 else f"columns are: {', '.join(map(str, columns[:12]))}")
        raise LmforgeError(f"column {column!r} not found in {path}", hint=hint)


def source_files(path: Path, fmt: str = "auto") -> list[Path] | None:
    """The files a directory source is read from, in reading order; None for a single file or table."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if not path.is_dir() or fmt in ("csv", "tsv"):
        return None
    if fmt == "imdb":
        return sorted(p for p in path.rglob("*.txt") if p.parent.name in ("pos", "neg", "unsup"))
    return sorted(path.rglob("*.txt"))


def read_imdb_files(files: list[Path], errors: str = "strict", batch: int = 1000,
                    max_chars: int = MAX_RECORD_CHARS) -> Iterator[list[str]]:
    """One document per file; a file over `max_chars` characters is an error once that much has been read."""
    for i in range(0, len(files), batch):
        docs = [s for s in (_read_document(p, errors, max_chars).strip() for p in files[i:i + batch]) if s]
        if docs:
            yield docs


def _read_document(path: Path, errors: str, max_chars: int) -> str:
    chunks, size = [], 0
    for chunk in iter_text_chunks(path, errors):
        size += len(chunk)
        if size > max_chars:
            raise too_long(path, "a document", max_chars, "one review per file")
        chunks.append(chunk)
    return "".join(chunks)


def iter_batches(path: Path, fmt: str = "auto", column: str = "", row_filter: str | RowFilter = "",
                 separator: str = "", errors: str = "strict", *, files: list[Path] | None = None,
                 max_chars: int = MAX_RECORD_CHARS) -> Iterator[list[str]]:
    """Batches of documents (non-empty, stripped strings) from a local file or directory, read lazily.
    `files` restricts a directory source to some of its source_files (one part of a fanned-out preparation);
    `max_chars` bounds one document, line, field or row (data.max_record_chars)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if column and fmt not in ("csv", "tsv"):
        raise LmforgeError(f"data.column={column!r} is set but {path} is read as {fmt}, not as a table",
                           hint="--set data.format=csv (or tsv), or --set data.column= for plain text")
    if fmt in ("csv", "tsv"):
        if path.is_dir():
            raise LmforgeError(f"{path} is a directory, not a {fmt.upper()} file", hint="point data.source at the file")
        yield from read_table(path, fmt, column, row_filter, errors, max_chars)
    elif fmt == "imdb":
        yield from read_imdb_files(source_files(path, fmt) if files is None else files, errors, max_chars=max_chars)
    else:
        for p in (source_files(path, fmt) if files is None else files) if path.is_dir() else [path]:
            yield from split_text(iter_text_chunks(p, errors), fmt, separator, max_chars, p)


def iter_documents(path: Path, fmt: str = "auto", column: str = "", row_filter: str = "", separator: str = "",
                   errors: str = "strict", *, limit: int = 0, max_chars: int = MAX_RECORD_CHARS) -> Iterator[str]:
    docs = (d for batch in iter_batches(path, fmt, column, row_filter, separator, errors, max_chars=max_chars)
            for d in batch)
    return islice(docs, limit) if limit else docs


def read_documents(path: Path, fmt: str = "auto", column: str = "", row_filter: str = "",
                   separator: str = "", errors: str = "strict", *, max_chars: int = MAX_RECORD_CHARS) -> list[str]:
    """All documents as a list (small corpora, tests); raises when there are none."""
    docs = list(iter_documents(path, fmt, column, row_filter, separator, errors, max_chars=max_chars))
    if not docs:
        raise LmforgeError(f"no documents found in {path}", hint="point data.source at a non-empty corpus")
    return docs
