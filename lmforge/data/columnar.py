"""Parquet files and Arrow IPC files (what `datasets`' save_to_disk writes: `data-00000-of-0000N.arrow`, Arrow
streams) read with pyarrow, without `datasets`: only the text column and the columns data.filter reads, in
batches of about BATCH_BYTES, so memory stays one batch (under one row group) whatever the file's size.

data.filter on parquet is pushed down where it can be: its comparisons of a column with literals of the
column's own type (==, <, <=, >, >=, in; joined by and/or) become a pyarrow expression that skips every row
group whose statistics rule it out, unread. The rows of the groups read are then kept by lmforge.core.rowfilter
itself, so the result is the same with or without the pushdown (the pushdown only ever skips groups in which no
row can match).

Bounds: a text value is at most MAX_FIELD_BYTES; a parquet row group's text column at most MAX_GROUP_BYTES
uncompressed (both read from the footer before any data); an Arrow record batch is sliced to BATCH_BYTES before
anything becomes Python strings. A corrupt file is one error line naming it."""
from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from lmforge.core.errors import LmforgeError
from lmforge.core.rowfilter import RowFilter
from lmforge.data.tables import choose_column, filter_columns, not_text, shown

log = logging.getLogger("lmforge.data")

BATCH_BYTES = 2 << 20
MAX_BATCH_ROWS = 20_000
MAX_FIELD_BYTES = 16 << 20  # one text value, unless data.max_record_chars says otherwise (read as bytes)
MAX_GROUP_BYTES = 4 << 30
SAMPLE_ROWS = 200


def _pa():
    import pyarrow as pa
    import pyarrow.compute as pc

    return pa, pc


def _is_text(t) -> bool:
    import pyarrow.types as pt

    if pt.is_dictionary(t):
        t = t.value_type
    return pt.is_string(t) or pt.is_large_string(t) or getattr(pt, "is_string_view", lambda _: False)(t)


def _broken(where: str, exc: Exception, what: str) -> LmforgeError:
    return LmforgeError(f"{where} is not a readable {what} file: {str(exc).strip().splitlines()[0][:200]}",
                        hint="check the file is complete (copy or download it again) and is " + what)


def _choose(where: str, schema, sample, column: str, explicit: bool) -> str:
    """The text column: data.column, or the one string column whose first rows hold text."""
    names = list(schema.names)
    if column and column in names:
        chosen = column
    else:
        samples = {n: (sample.column(n).to_pylist() if n in sample.schema.names else [None]) for n in names}
        chosen = choose_column(where, samples, column, explicit)
    if not _is_text(schema.field(chosen).type):
        raise not_text(where, chosen, str(schema.field(chosen).type))
    return chosen


def _check_filter(where: str, names: list[str], wanted: list[str]) -> None:
    import difflib

    for c in wanted:
        if c not in names:
            close = difflib.get_close_matches(c, names, n=1)
            raise LmforgeError(f"data.filter: no column {c!r} in {where}" + (f"; did you mean {close[0]!r}?"
                               if close else ""), hint=f"columns are: {shown(names)}; quote names with spaces in "
                               "backticks, e.g. `my column` == \"x\"")


def _docs(batch, text: str, rows: RowFilter | None, wanted: list[str], where: str,
          max_field: int | None = None) -> list[str]:
    """The kept, stripped, non-empty text values of one record batch."""
    pa, pc = _pa()
    values = batch.column(text)
    if len(values) and values.null_count < len(values):
        longest = pc.max(pc.binary_length(values.cast(pa.large_string()) if pa.types.is_dictionary(values.type)
                                          else values)).as_py()
        limit = max_field or MAX_FIELD_BYTES
        if longest and longest > limit:
            raise LmforgeError(f"a value of column {text!r} in {where} is {longest} bytes, over the limit of "
                               f"{limit} (data.max_record_chars)", hint="split such documents before training on "
                               "them, or raise data.max_record_chars (up to the operator's ceiling)")
    if rows is not None:
        frame = batch.select(wanted).to_pandas()
        keep = np.asarray(rows.mask(frame, where=where), dtype=bool)
        values = values.filter(pa.array(keep))
    return [s for s in (t.strip() for t in values.to_pylist() if t) if s]


# -- parquet ---------------------------------------------------------------------------------------------------

def arrow_expression(rows: RowFilter | None, schema):
    """The part of `rows` pyarrow can evaluate on row-group statistics, as one expression that every kept row
    satisfies (a weaker condition where parts cannot be expressed), or None when no part can."""
    if rows is None:
        return None
    exprs = [e for e in (_expr(p.tree, p.quoted, schema) for p in rows.parts) if e is not None]
    if not exprs:
        return None
    out = exprs[0]
    for e in exprs[1:]:
        out = out & e
    return out


def _literal(node):
    if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    return node.value if isinstance(node, ast.Constant) else None


def _fits(t, value) -> bool:
    import pyarrow.types as pt

    if isinstance(value, bool):
        return pt.is_boolean(t)
    if isinstance(value, (int, float)):
        return pt.is_integer(t) or pt.is_floating(t)
    return isinstance(value, str) and _is_text(t)


def _expr(node, quoted: dict, schema):
    """An expression implied by `node` (rows where node holds satisfy it), or None. `!=`, `not in` and `not` are
    never pushed: on a null, pyarrow says null (row dropped) where the row filter says true."""
    import operator

    import pyarrow.dataset as ds

    if isinstance(node, ast.BoolOp):
        parts = [_expr(v, quoted, schema) for v in node.values]
        if isinstance(node.op, ast.And):
            parts = [p for p in parts if p is not None]
            if not parts:
                return None
        elif any(p is None for p in parts):
            return None
        out = parts[0]
        for p in parts[1:]:
            out = (out & p) if isinstance(node.op, ast.And) else (out | p)
        return out
    if not isinstance(node, ast.Compare):
        return None
    ops = {ast.Eq: operator.eq, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
    flipped = {ast.Lt: operator.gt, ast.LtE: operator.ge, ast.Gt: operator.lt, ast.GtE: operator.le, ast.Eq: operator.eq}
    operands, out = [node.left, *node.comparators], None
    for i, op in enumerate(node.ops):
        left, right, step = operands[i], operands[i + 1], None
        if isinstance(op, ast.In) and isinstance(left, ast.Name):
            name = quoted.get(left.id, left.id)
            values = [_literal(e) for e in right.elts]
            if name in schema.names and values and all(v is not None and _fits(schema.field(name).type, v)
                                                       for v in values):
                step = ds.field(name).isin(values)
        elif type(op) in ops:
            if isinstance(left, ast.Name) and not isinstance(right, ast.Name):
                name, value, fn = quoted.get(left.id, left.id), _literal(right), ops[type(op)]
            elif isinstance(right, ast.Name) and not isinstance(left, ast.Name):
                name, value, fn = quoted.get(right.id, right.id), _literal(left), flipped[type(op)]
            else:
                name = value = fn = None
            if name in schema.names and value is not None and _fits(schema.field(name).type, value):
                step = fn(ds.field(name), ds.scalar(value))
        if step is not None:
            out = step if out is None else out & step  # a chain is an and: a part left out only weakens it
    return out


def parquet_row_groups(path: Path, rows: RowFilter | None, schema=None) -> list[int]:
    """The row groups of a parquet file that data.filter's pushed-down part cannot rule out, by their statistics."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    everything = list(range(meta.num_row_groups))
    expr = arrow_expression(rows, schema if schema is not None else meta.schema.to_arrow_schema())
    if expr is None:
        return everything
    fragment = next(iter(ds.dataset(str(path), format="parquet").get_fragments()))
    kept = sorted(rg.id for rg in fragment.subset(filter=expr).row_groups)
    if len(kept) < len(everything):
        log.info("data.filter skips %d of %d row groups of %s by their statistics", len(everything) - len(kept),
                 len(everything), path)
    return kept


def read_parquet(path: Path, where: str, column: str = "", row_filter: RowFilter | None = None,
                 explicit_column: bool = True, *, max_field: int | None = None) -> Iterator[list[str]]:
    """Documents from the text column of a parquet file, a batch of about BATCH_BYTES at a time."""
    pa, _ = _pa()
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(path), memory_map=False, pre_buffer=False, buffer_size=1 << 20)
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise _broken(where, exc, "parquet") from None
    wanted = filter_columns(row_filter)
    _check_filter(where, schema.names, wanted)
    meta = pf.metadata
    try:
        strings = [n for n in schema.names if _is_text(schema.field(n).type)]
        sample = next(pf.iter_batches(batch_size=SAMPLE_ROWS, columns=strings), None) if strings and \
            meta.num_rows else None
        text = _choose(where, schema, sample if sample is not None else pa.record_batch([], schema=pa.schema([])),
                       column, explicit_column)
        groups = parquet_row_groups(path, row_filter, schema)
        rows = _batch_rows(meta, text, groups, where)
        for batch in pf.iter_batches(batch_size=rows, row_groups=groups, columns=[text, *wanted],
                                     use_threads=False):
            docs = _docs(batch, text, row_filter, wanted, where, max_field)
            if docs:
                yield docs
    except (pa.ArrowException, OSError) as exc:
        raise _broken(where, exc, "parquet") from None


def _batch_rows(meta, text: str, groups: list[int], where: str) -> int:
    """Rows per batch so that a batch of the text column is about BATCH_BYTES (from the footer's sizes); refuses a
    row group whose text column is past MAX_GROUP_BYTES before reading it."""
    biggest_row = 1.0
    for g in groups:
        rg = meta.row_group(g)
        for j in range(rg.num_columns):
            col = rg.column(j)
            if col.path_in_schema == text and rg.num_rows:
                if col.total_uncompressed_size > MAX_GROUP_BYTES:
                    raise LmforgeError(f"row group {g} of {where} holds {col.total_uncompressed_size} bytes of "
                                       f"column {text!r}, over the limit of {MAX_GROUP_BYTES}",
                                       hint="write the file with smaller row groups (row_group_size)")
                biggest_row = max(biggest_row, col.total_uncompressed_size / rg.num_rows)
    return int(min(MAX_BATCH_ROWS, max(1, BATCH_BYTES // biggest_row)))


# -- Arrow IPC (save_to_disk) -----------------------------------------------------------------------------------

def _arrow_batches(path: Path, where: str):
    """The record batches of an Arrow IPC stream (save_to_disk's format) or file, read one at a time."""
    pa, _ = _pa()
    source = pa.OSFile(str(path))
    try:
        try:
            reader = pa.ipc.open_stream(source)
            return source, reader.schema, iter(reader)
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_file(source)
            return source, reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
    except (pa.ArrowException, OSError) as exc:
        source.close()
        raise _broken(where, exc, "Arrow (save_to_disk)") from None


def _slices(batch, text: str):
    """The batch in slices of about BATCH_BYTES of text (datasets writes 1000 rows a batch; a hostile file one)."""
    size = batch.column(text).nbytes
    step = batch.num_rows if size <= BATCH_BYTES else max(1, int(batch.num_rows * BATCH_BYTES / size))
    for start in range(0, batch.num_rows, step):
        yield batch.slice(start, step)


def read_arrow(path: Path, where: str, column: str = "", row_filter: RowFilter | None = None,
               explicit_column: bool = True, *, max_field: int | None = None) -> Iterator[list[str]]:
    """Documents from the text column of one Arrow IPC file, a record batch at a time."""
    pa, _ = _pa()
    source, schema, batches = _arrow_batches(path, where)
    wanted = filter_columns(row_filter)
    try:
        _check_filter(where, schema.names, wanted)
        text = None
        for batch in batches:
            if text is None:
                text = _choose(where, schema, batch.slice(0, SAMPLE_ROWS), column, explicit_column)
            for piece in _slices(batch, text):
                docs = _docs(piece.select([text, *[w for w in wanted if w != text]]) if wanted else
                             piece.select([text]), text, row_filter, wanted, where, max_field)
                if docs:
                    yield docs
    except (pa.ArrowException, OSError) as exc:
        raise _broken(where, exc, "Arrow (save_to_disk)") from None
    finally:
        source.close()
