"""The bounded readers under lmforge.data.formats: each holds at most one record (a document, a line, a CSV/TSV
row) of at most data.max_record_chars characters plus one read, and looks at each character once.

- `open_regular`: a local file opened only when it is a regular file (a FIFO is not even waited on; /dev/zero or
  a socket named `x.txt` in a corpus directory would never end).
- `split_documents`: text split on a separator, searching only the text not yet searched (the old splitter joined
  each read to the unsplit remainder and split it all again: quadratic on text without separators).
- `table_rows`: CSV/TSV rows through the standard library's C parser, fed one line of at most the bound at a time
  and counting the characters of the row being parsed, so one 200 MB field or row stops at the bound instead of
  being parsed whole (pandas' C parser held it, ~5 bytes per byte).
"""
from __future__ import annotations

import csv
import io
import os
import stat
from pathlib import Path
from typing import IO, Iterator

from lmforge.core.errors import LmforgeError

RECORD_HINT = "raise data.max_record_chars (up to the operator's ceiling) if such records are expected"


def open_regular(path: Path) -> IO[bytes]:
    """`path` opened for reading in binary mode, if it is a regular file (symlinks followed); else one line."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO does not wait for a writer
    except OSError as e:
        raise LmforgeError(f"cannot read {path}: {e.strerror}", hint="check the path and its permissions") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LmforgeError(f"{path} is not a regular file (a device, FIFO or socket never ends)",
                               hint="point data.source at corpus files only")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def too_long(where: object, what: str, limit: int, hint: str) -> LmforgeError:
    return LmforgeError(f"{where}: {what} is longer than data.max_record_chars={limit} characters",
                        hint=f"{hint}; or {RECORD_HINT}")


def split_documents(chunks: Iterator[str], sep: str, limit: int, where: object = "text") -> Iterator[list[str]]:
    """The pieces of the text `chunks` make, split on `sep`, one list per chunk that completes any (the last piece
    at the end). Only the text after the last separator is kept, as a list of chunks never searched again but for
    the len(sep) - 1 characters a separator could start in; a piece over `limit` characters is an error."""
    k = len(sep) - 1
    pending: list[str] = []  # the unfinished piece, already searched
    size, tail = 0, ""  # its length; its last k characters
    for chunk in chunks:
        combined = tail + chunk
        at = combined.find(sep)
        if at < 0:
            pending.append(chunk)
            size += len(chunk)
            tail = combined[-k:] if k else ""
        else:
            pos = size - len(tail) + at  # where the separator starts in pending + chunk
            before = "".join(pending)
            first = before[:pos] if pos <= size else before + chunk[:pos - size]
            done = chunk[pos + len(sep) - size:].split(sep)  # all of it text not searched before
            rest = done.pop()
            done.insert(0, first)
            pending, size, tail = [rest], len(rest), rest[-k:] if k else ""
            if max(map(len, done)) > limit:
                raise too_long(where, "a document", limit, "set data.separator or data.format=lines to split it")
            yield done
        if size > limit:
            raise too_long(where, "a document", limit, "set data.separator or data.format=lines to split it")
    yield ["".join(pending)]


def lf(chunks: Iterator[str]) -> Iterator[str]:
    """`chunks` with CRLF line ends as LF, a CR at the end of one chunk held until the next shows what follows."""
    held = ""
    for chunk in chunks:
        chunk = held + chunk
        held = "\r" if chunk.endswith("\r") else ""
        yield (chunk[:-1] if held else chunk).replace("\r\n", "\n")
    if held:
        yield held


class _Lines:
    """The lines of a text stream for csv.reader, each at most `limit` characters, counting the characters of
    the row being parsed (`row` is reset by the caller after each row): a quoted field spanning many short lines
    is bounded too."""

    def __init__(self, text: io.TextIOBase, limit: int, where: object):
        self.text, self.limit, self.where, self.row, self.line = text, limit, where, 0, 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.text.readline(self.limit + 1)
        if not line:
            raise StopIteration
        self.line += 1
        self.row += len(line)
        if self.row > self.limit:
            raise too_long(self.where, f"the row ending at line {self.line}", self.limit,
                           "a field or row this long is not text to train on")
        return line


def table_rows(raw: IO[bytes], delimiter: str, limit: int, errors: str, where: object) -> Iterator[list[str]]:
    """The rows of a CSV/TSV byte stream (UTF-8, a BOM skipped; quoted fields may span lines), blank lines
    skipped, each row at most `limit` characters."""
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors=errors, newline="")
    lines = _Lines(text, limit, where)
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)  # the module's own cap (128 KiB); _Lines bounds each row below it
    try:
        for row in csv.reader(lines, delimiter=delimiter, strict=False):
            lines.row = 0
            if row:
                yield row
    except csv.Error as e:
        raise LmforgeError(f"cannot parse {where} as {'TSV' if delimiter == chr(9) else 'CSV'} near line "
                           f"{lines.line}: {e}", hint="check data.format (csv or tsv) matches the file's delimiter"
                           ) from None
