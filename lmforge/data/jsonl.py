"""JSON lines (one object per line; `.jsonl`, `.ndjson`, and `.json` files written that way, as `datasets`'
to_json does) and `.json` files holding one array of objects, read from a binary stream (a file, or a
compressed stream: lmforge.data.compressed). The text is one field, data.column, nested keys written `a.b`;
data.filter reads fields the same way, with their JSON types (numbers compare as numbers).

Bounds: a line is at most MAX_RECORD_BYTES (a line past it is an error naming the file and line, read no
further); a batch holds at most ~BATCH_BYTES of lines; a whole-file array at most MAX_ARRAY_BYTES."""
from __future__ import annotations

import json
from typing import BinaryIO, Iterator

import numpy as np
import pandas as pd

from lmforge.core.errors import LmforgeError
from lmforge.core.rowfilter import RowFilter
from lmforge.data.tables import choose_column, filter_columns, shown

MAX_RECORD_BYTES = 16 << 20   # one JSON line, unless data.max_record_chars says otherwise (read as bytes)
MAX_ARRAY_BYTES = 256 << 20   # a `.json` array is parsed whole: past this, JSON lines are the way
BATCH_BYTES = 1 << 20
BATCH_ROWS = 20_000
SAMPLE_ROWS = 200             # records the text field is chosen on
_HINT = "check the file is JSON lines (one object per line), or --set data.format=text"


def lookup(record: dict, key: str):
    """record[key], or the nested value a.b.c names when the record has no key `a.b.c` itself; None if absent."""
    if key in record:
        return record[key]
    value = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def flatten(record: dict, prefix: str = "", depth: int = 0, out: dict | None = None) -> dict:
    """Leaf fields of a record as `a.b` -> value (lists and values beyond depth 8 are leaves)."""
    out = {} if out is None else out
    for k, v in record.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and depth < 8:
            flatten(v, name + ".", depth + 1, out)
        else:
            out[name] = v
    return out


def iter_records(stream: BinaryIO, where: str, errors: str = "strict",
                 max_record: int | None = None) -> Iterator[list[dict]]:
    """Batches of objects from JSON lines or a JSON array, read from `stream`."""
    max_record = max_record or MAX_RECORD_BYTES
    first = stream.peek(64)[:64] if hasattr(stream, "peek") else b""
    if first.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        yield from _array(stream, where, errors)
        return
    batch, size, offset = [], 0, 0
    for number, line in enumerate(_lines(stream, where, max_record), 1):
        try:
            text = line.decode("utf-8", errors)
        except UnicodeDecodeError as exc:
            raise LmforgeError(f"{where} is not valid UTF-8: byte 0x{line[exc.start]:02x} at offset "
                               f"{offset + exc.start} (line {number})",
                               hint="re-encode the file as UTF-8, or --set data.encoding_errors=replace") from None
        offset += len(line)
        if number == 1:
            text = text.lstrip("\ufeff")
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise LmforgeError(f"line {number} of {where} is not JSON: {exc}", hint=_HINT) from None
        if not isinstance(record, dict):
            raise LmforgeError(f"line {number} of {where} is a JSON {type(record).__name__}, not an object",
                               hint="each line needs an object such as {\"text\": \"...\"}")
        batch.append(record)
        size += len(line)
        if size >= BATCH_BYTES or len(batch) >= BATCH_ROWS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _lines(stream: BinaryIO, where: str, max_record: int) -> Iterator[bytes]:
    number = 0
    while True:
        line = stream.readline(max_record + 1)
        if not line:
            return
        number += 1
        if len(line) > max_record:
            raise LmforgeError(f"line {number} of {where} is longer than {max_record} bytes (data.max_record_chars)",
                               hint="split the record, or check the file is JSON lines (one object per line); or "
                                    "raise data.max_record_chars (up to the operator's ceiling)")
        yield line


def _array(stream: BinaryIO, where: str, errors: str) -> Iterator[list[dict]]:
    data = stream.read(MAX_ARRAY_BYTES + 1)
    if len(data) > MAX_ARRAY_BYTES:
        raise LmforgeError(f"{where} is one JSON array larger than {MAX_ARRAY_BYTES} bytes, which would be read "
                           "whole", hint="write it as JSON lines (one object per line, .jsonl), which stream")
    try:
        records = json.loads(data.decode("utf-8", errors).lstrip("\ufeff"))
    except UnicodeDecodeError as exc:
        raise LmforgeError(f"{where} is not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}",
                           hint="re-encode the file as UTF-8, or --set data.encoding_errors=replace") from None
    except ValueError as exc:
        raise LmforgeError(f"{where} is not valid JSON: {exc}", hint=_HINT) from None
    del data
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise LmforgeError(f"{where} is JSON but not an array of objects", hint="use [{\"text\": \"...\"}, ...] "
                           "or JSON lines")
    for i in range(0, len(records), BATCH_ROWS):
        yield records[i:i + BATCH_ROWS]


def read_jsonl(stream: BinaryIO, where: str, column: str = "", row_filter: RowFilter | None = None,
               errors: str = "strict", explicit_column: bool = True, *,
               max_record: int | None = None) -> Iterator[list[str]]:
    """Documents: the text field of each object (stripped, empty ones dropped) that `row_filter` keeps."""
    wanted = filter_columns(row_filter)
    chosen, checked = "", False
    for records in iter_records(stream, where, errors, max_record):
        if not chosen:
            chosen = _choose(records, where, column, explicit_column)
        texts = [lookup(r, chosen) for r in records]
        for i, t in enumerate(texts):
            if t is not None and not isinstance(t, str):
                raise LmforgeError(f"field {chosen!r} of {where} holds {type(t).__name__} values, not text "
                                   f"(record {i + 1} of a batch: {json.dumps(t)[:60]})",
                                   hint="--set data.column=NAME to name a field of strings")
        if row_filter is not None:
            if not checked:
                _check_filter_fields(records, wanted, where)
                checked = True
            frame = pd.DataFrame({c: pd.Series([lookup(r, c) for r in records], dtype=_dtype(records, c))
                                  for c in wanted}, index=range(len(records)))
            keep = np.asarray(row_filter.mask(frame, where=where), dtype=bool)
            texts = [t for t, k in zip(texts, keep.tolist()) if k]
        docs = [s for s in (t.strip() for t in texts if t) if s]
        if docs:
            yield docs


def _check_filter_fields(records: list[dict], wanted: list[str], where: str) -> None:
    """A field the filter names must occur in the first batch (later, a record without it is null there)."""
    import difflib

    fields = list(dict.fromkeys(k for r in records[:SAMPLE_ROWS] for k in flatten(r)))
    for c in wanted:
        if not any(lookup(r, c) is not None for r in records):
            close = difflib.get_close_matches(c, fields, n=1)
            raise LmforgeError(f"data.filter: no field {c!r} in {where}" + (f"; did you mean {close[0]!r}?"
                               if close else ""), hint=f"fields are: {shown(fields)} (nested: a.b)")


def _dtype(records: list[dict], column: str):
    """object unless every value is a number (then float64/int64, so comparisons are numeric) or a bool."""
    values = [lookup(r, column) for r in records]
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present) and len(present) == len(values):
        return bool
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float64" if any(isinstance(v, float) for v in present) or len(present) < len(values) else "int64"
    return object


def _choose(records: list[dict], where: str, column: str, explicit: bool) -> str:
    sample = records[:SAMPLE_ROWS]
    fields: dict[str, list] = {}
    for r in sample:
        for k, v in flatten(r).items():
            fields.setdefault(k, []).append(v)
    if column and any(lookup(r, column) is not None for r in sample):
        return column
    return choose_column(where, fields, column, explicit, kind="field", key_hint=" (nested: a.b)")
