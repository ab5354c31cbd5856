"""One corpus from any local source: a file, a directory or glob of files (each read by the reader its format
needs, in a stable order), a save_to_disk folder, or an IMDB tree. Batches of documents, lazily, for
lmforge.data.prepare and partition; what the source fingerprint hashes (the same files, in the same order).

Readers: formats.py (text, lines, CSV/TSV, IMDB), jsonl.py, columnar.py (parquet, Arrow), each through
compressed.py when the file is gzip/bzip2/xz/zstd. Which reader reads which file: detect.py."""
from __future__ import annotations

import logging
from contextlib import closing
from pathlib import Path
from typing import Iterator

from lmforge.core.config import DataConfig
from lmforge.core.errors import LmforgeError
from lmforge.core.limits import ArchiveLimits
from lmforge.core.rowfilter import RowFilter, parse as parse_filter
from lmforge.data import detect, formats
from lmforge.data.columnar import read_arrow, read_parquet
from lmforge.data.compressed import open_member
from lmforge.data.jsonl import read_jsonl

log = logging.getLogger("lmforge.data")


def _explicit(data: DataConfig | None, key: str) -> bool:
    return data is None or key in getattr(data, "user_set", frozenset())


def limits_of(data: DataConfig | None) -> ArchiveLimits:
    if data is None:
        return ArchiveLimits()
    return ArchiveLimits(data.archive_max_bytes, data.archive_max_members, data.archive_max_ratio)


def is_imdb_source(path: Path, fmt: str) -> bool:
    return fmt == "imdb" or (fmt == "auto" and detect.is_imdb(path))


def members(path: Path, data: DataConfig | None = None, fmt: str | None = None) -> list[detect.Member]:
    fmt = data.format if fmt is None else fmt
    return detect.members(Path(path), fmt, _explicit(data, "format"))


def source_files(path: Path, fmt: str = "auto", data: DataConfig | None = None) -> list[Path] | None:
    """The files a directory or glob source is read from, in reading order (what data.parts divides); None for a
    single file (one part)."""
    path = Path(path)
    if is_imdb_source(path, fmt):
        return formats.source_files(path, "imdb")
    if not (path.is_dir() or detect.is_glob(path)):
        return None
    return [m.path for m in members(path, data, fmt)]


def fingerprint_files(path: Path) -> list[tuple[str, Path]]:
    """(name, file) of every file whose bytes make the source: a directory's every file (what an archive or an
    object-store prefix brought), a glob's matches, or the file."""
    path = Path(path)
    if detect.is_glob(path):
        return [(m.as_posix(), m) for m in detect.listing(Path("."), str(path))]
    if path.is_dir():
        return [(p.relative_to(path).as_posix(), p) for p in sorted(p for p in path.rglob("*") if p.is_file())]
    return [(path.name, path)]


def describe(path: Path, data: DataConfig) -> str:
    """One line on how the source is read (for the clean step's log)."""
    if is_imdb_source(path, data.format):
        return "read as an IMDB tree"
    found = members(path, data)
    fmts = sorted({m.fmt + (f"+{m.compression}" if m.compression else "") for m in found})
    return f"{len(found)} file{'s' * (len(found) != 1)} read as {', '.join(fmts) or 'nothing'}"


def iter_batches(path: Path, data: DataConfig, files: list[Path] | None = None,
                 row_filter: str | RowFilter | None = None, warn: bool = False) -> Iterator[list[str]]:
    """Batches of documents from a local source, read lazily; `files` restricts a directory or glob to some of its
    files (one part of a fanned-out preparation); `row_filter` replaces data.filter (val_filter's second pass)."""
    path = Path(path)
    rows = data.filter if row_filter is None else row_filter
    rows = rows if isinstance(rows, RowFilter) or not rows else parse_filter(rows)
    if is_imdb_source(path, data.format):
        yield from formats.iter_batches(path, "imdb", data.column, rows or "", data.separator, data.encoding_errors,
                                        files=files, max_chars=data.max_record_chars)
        return
    found = members(path, data)
    if warn and (note := detect.override_note(found, data.format, _explicit(data, "format"))):
        log.warning(note)
    if files is not None:
        wanted = {Path(f) for f in files}
        found = [m for m in found if m.path in wanted]
    if not found:
        raise LmforgeError(f"no readable files in {path}", hint="a directory source needs files named .txt .csv "
                           ".tsv .jsonl .json .parquet or .arrow (compressed or not)")
    column_explicit = _explicit(data, "column")
    for m in found:
        if data.column and m.fmt in detect.TEXT_FORMATS and column_explicit:
            raise LmforgeError(f"data.column={data.column!r} is set but {m.path} is read as {m.fmt}, not as a "
                               "table", hint="--set data.format=csv (or tsv, jsonl, parquet), or --set data.column= "
                               "for plain text")
        yield from read_member(m, data, rows or None, column_explicit)


def read_member(m: detect.Member, data: DataConfig, rows: RowFilter | None,
                column_explicit: bool = True) -> Iterator[list[str]]:
    """The documents of one corpus file, by its format and compression."""
    where = str(m.path)
    column = data.column if m.fmt not in detect.TEXT_FORMATS else ""
    if m.fmt == "parquet":
        if m.compression:
            raise LmforgeError(f"{where} is a compressed parquet file", hint="parquet compresses its own pages: "
                               "store it uncompressed (write it with compression='zstd' inside instead)")
        yield from read_parquet(m.path, where, column, rows, column_explicit, max_field=data.max_record_chars)
    elif m.fmt == "hf":
        yield from read_arrow(m.path, where, column, rows, column_explicit, max_field=data.max_record_chars)
    elif m.fmt in ("jsonl", "json"):
        with closing(open_member(m.path, m.compression, limits_of(data))) as stream:
            yield from read_jsonl(stream, where, column, rows, data.encoding_errors, column_explicit,
                                  max_record=data.max_record_chars)
    elif m.fmt in ("csv", "tsv"):
        if m.compression:
            with closing(open_member(m.path, m.compression, limits_of(data))) as stream:
                yield from formats.read_table(m.path, m.fmt, column, rows or "", data.encoding_errors,
                                              data.max_record_chars, stream=stream, explicit_column=column_explicit)
        else:
            yield from formats.read_table(m.path, m.fmt, column, rows or "", data.encoding_errors,
                                          data.max_record_chars, explicit_column=column_explicit)
    else:
        if rows is not None:
            raise LmforgeError(f"data.filter selects table rows, but {where} is read as {m.fmt}",
                               hint="--set data.filter= for text, or use a table (csv, tsv, jsonl, parquet)")
        if m.compression:
            with closing(open_member(m.path, m.compression, limits_of(data))) as stream:
                yield from formats.split_text(formats.iter_text_chunks(m.path, data.encoding_errors, stream=stream),
                                              m.fmt, data.separator, data.max_record_chars, m.path)
        else:
            yield from formats.split_text(formats.iter_text_chunks(m.path, data.encoding_errors), m.fmt,
                                          data.separator, data.max_record_chars, m.path)
