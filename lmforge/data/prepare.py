"""Corpus -> the prepared-data directory (tokenizer.json, train.bin, val.bin, meta.json), streaming:
1. read + clean batch by batch into a spill file (.cleaned.<pid>.jsonl), hashing documents as they pass;
2. split into train/val (plan_split): by document, each document's side drawn from its own content hash
   (data.split = "documents"), or by position, the last data.val_fraction of the text (data.split =
   "contiguous", nanoGPT's way, for continuous text; also the fallback when a source yields too few
   documents for a document split);
3. train the tokenizer on the train side read back from the spill file;
4. encode batch by batch and append to the shards; delete the spill file.
Memory holds one batch (~1 MB of text) at a time, plus the dedupe hashes and one number per document.
meta.json records the split and a data fingerprint (corpus, tokenizer, split and shard hashes): what a model
trained on this directory was trained on. A directory whose meta.json records the same source fingerprint (a
hash of the source files' bytes) is reused instead of recomputed.
partition.py runs the same steps in parts (data.parts > 1) and writes the same bytes."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
from tokenizers import Tokenizer

from lmforge.core import interrupt
from lmforge.core.config import Config
from lmforge.data.clean import clean_batches
from lmforge.data.corpus import describe, fingerprint_files, iter_batches
from lmforge.data.detect import TABLE_FORMATS, source_format
from lmforge.data.objectstore import manifest_for
from lmforge.data.shards import META, content_split, meta_for, shard_dtype, write_meta, write_split_files
from lmforge.data.tokenize import build_tokenizer, frame, plain_encoder, special_ids
from lmforge.core.rowfilter import all_of
from lmforge.core.errors import LmforgeError
from lmforge.core.records import Cleaned, PreparedData
from lmforge.core.redact import redact_text

log = logging.getLogger("lmforge.data")

PREPARED_FORMAT = 3  # bump when the shard layout or the pipeline's output changes (3: content-hash splits)
MIN_DOCUMENT_SPLIT = 20  # fewer documents than this: a document split is too coarse, split the text instead


def source_fingerprint(path: Path) -> str:
    """Identity of the corpus files: the relative path and the bytes of each. Content, not size and mtime: a
    file replaced by another of the same size (a copy that keeps times, a clock reset) is new data."""
    h = hashlib.sha256(f"format={PREPARED_FORMAT}".encode())
    for name, p in fingerprint_files(Path(path)):
        h.update(f"{name}\0{p.stat().st_size}\0".encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def cached_meta(out_dir: Path, fingerprint: str) -> dict | None:
    """The meta of a complete earlier preparation of the same source, or None."""
    try:
        meta = json.loads((out_dir / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("source_fingerprint") != fingerprint or not (out_dir / "tokenizer.json").is_file():
        return None
    if not (out_dir / VAL_TEXT).is_file():  # prepared before val text was kept: re-made (the same shards)
        return None
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in ("train", "val"):
        shard = out_dir / meta[split]["path"]
        if not shard.is_file() or shard.stat().st_size != meta[split]["tokens"] * itemsize:
            return None
    return {**meta, "dir": str(out_dir), "cached": True}


def limit_documents(batches: Iterable[list[str]], limit: int) -> Iterator[list[str]]:
    left = limit
    for docs in batches:
        if left <= 0:
            return
        yield docs[:left]
        left -= len(docs)


class SpillWriter:
    """Cleaned documents to a spill file, one JSON list per line (ASCII escapes keep even lone surrogates
    intact), counting documents and characters, hashing them in order, and noting where each line starts."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "w", encoding="ascii")
        self.hash = hashlib.sha256()
        self.documents = self.chars = 0
        self.lines: list[tuple[int, int]] = []  # (byte offset, documents) per line
        self.offset = 0

    def write(self, docs: list[str]) -> None:
        line = json.dumps(docs) + "\n"
        self.lines.append((self.offset, len(docs)))
        self.offset += self.file.write(line)  # ASCII: characters are bytes
        self.hash.update(("\0".join(docs) + "\0").encode("utf-8", "surrogatepass"))
        self.documents += len(docs)
        self.chars += sum(map(len, docs))

    def close(self, report: list[dict]) -> Cleaned:
        self.file.close()
        return Cleaned(spill=self.path, documents=self.documents, chars=self.chars,
                       corpus_sha256=self.hash.hexdigest(), lines=tuple(self.lines), clean_report=report)

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def clean_to_spill(path: Path, cfg: Config, out_dir: Path, files: list[Path] | None = None,
                   spill_name: str = ".cleaned") -> Cleaned:
    """Read and clean the corpus (or only `files` of a directory source) into out_dir/<spill_name>.<pid>.jsonl;
    returns the spill file's record (documents, chars, corpus_sha256, lines, clean_report)."""
    d = cfg.data
    out_dir.mkdir(parents=True, exist_ok=True)
    if files is None:
        log.info("data source %s: %s", redact_text(d.source), describe(Path(path), d))
    batches = iter_batches(Path(path), d, files, warn=files is None or spill_name.endswith("part-0000"))
    if d.max_documents:
        batches = limit_documents(batches, d.max_documents)
    report: list[dict] = []
    spill = SpillWriter(out_dir / f"{spill_name}.{os.getpid()}.jsonl")  # per process: runs never share it
    try:
        for docs in clean_batches(batches, cfg.clean, report):
            interrupt.check("data preparation")
            spill.write(docs)
    except BaseException:
        spill.discard()
        raise
    return spill.close(report)


def finish_cleaning(cleaned: Cleaned, path: Path, cfg: Config) -> Cleaned:
    """Check that documents are left, and mark the val-eligible ones when data.val_filter is set."""
    if not cleaned.documents:
        remove_spill(cleaned)
        raise LmforgeError(f"no documents left in {path} after reading and cleaning",
                           hint="check data.format / data.column / data.filter and clean.min_chars")
    cleaned = dataclasses.replace(cleaned, source=Path(path))
    if not cfg.data.val_filter:
        return cleaned
    try:
        return dataclasses.replace(cleaned, val_ok=mark_val_eligible(cleaned, path, cfg))
    except BaseException:
        remove_spill(cleaned)
        raise


def mark_val_eligible(cleaned: Cleaned, path: Path, cfg: Config) -> Path:
    """<spill>.val-ok.npy: a boolean per cleaned document, true when a table row matching data.val_filter
    cleans to the same text (one more streaming pass over the rows; memory is a hash per matching row)."""
    d = cfg.data
    if source_format(Path(path), d.format, "format" in getattr(d, "user_set", ())) not in TABLE_FORMATS:
        raise LmforgeError(f"data.val_filter selects table rows, but {path} is not read as a table",
                           hint="--set data.format=csv (or tsv, jsonl, parquet), or --set data.val_filter=")
    rows = all_of(("data.filter", d.filter), ("data.val_filter", d.val_filter))  # two trees, never one string
    matching = iter_batches(Path(path), d, row_filter=rows)
    eligible: set[int] = set()
    for docs in clean_batches(matching, dataclasses.replace(cfg.clean, dedupe=False), []):
        eligible.update(pd.util.hash_array(np.array(docs, dtype=object)).tolist())
    eligible_hashes = np.fromiter(eligible, np.uint64, len(eligible))
    ok = np.concatenate([np.isin(pd.util.hash_array(np.array(docs, dtype=object)), eligible_hashes)
                         for docs in read_spill(cleaned.spill)])
    if not ok.any():
        raise LmforgeError(f"no document of {path} matches data.val_filter {d.val_filter!r}",
                           hint="check the filter against the file's rows, or --set data.val_filter=")
    mask = Path(f"{cleaned.spill}.val-ok.npy")
    np.save(mask, ok)
    return mask


def remove_spill(cleaned: Cleaned) -> None:
    Path(cleaned.spill).unlink(missing_ok=True)
    if cleaned.val_ok:
        Path(cleaned.val_ok).unlink(missing_ok=True)


def _hash_key(seed: int) -> str:
    return hashlib.sha256(f"lmforge-split-{seed}".encode()).hexdigest()[:16]  # pandas wants 16 characters


def document_hashes(batches: Iterable[list[str]], seed: int) -> np.ndarray:
    """A uint64 per document, keyed by the split seed (what content_split compares against the fraction)."""
    key = _hash_key(seed)
    parts = [pd.util.hash_array(np.array(docs, dtype=object), hash_key=key) for docs in batches if docs]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def document_split(cleaned: Cleaned, cfg: Config) -> np.ndarray:
    """True where a document goes to val: its content-hash draw, limited to val-eligible documents
    (data.val_filter)."""
    hashes = document_hashes(read_spill(cleaned.spill), cfg.data.seed)
    eligible = np.load(cleaned.val_ok) if cleaned.val_ok else None
    return content_split(hashes, cfg.data.val_fraction, eligible)


def joiner(cfg: Config) -> str:
    """The text between documents when the corpus is read as one stream: what it was split on."""
    fmt = cfg.data.format
    return cfg.data.separator or ("\n" if fmt in ("lines", "csv", "tsv") else "\n\n")


@dataclass(frozen=True)
class Split:
    """How the documents of a spill file divide into train and val.
    documents: is_val holds a flag per document; each is framed <bos> ... <eos>.
    contiguous: the documents joined by `joiner` are one text, cut at character cut_char of stream_chars; the
    train side starts with <bos>, the val side ends with <eos>. Document i's piece of the stream is
    joiner + document (no joiner before the first); the cut falls in piece cut_doc at offset cut_offset."""
    method: str
    val_fraction: float
    seed: int = 0
    val_filter: str = ""
    is_val: np.ndarray | None = None
    joiner: str = ""
    stream_chars: int = 0
    cut_char: int = 0
    cut_doc: int = 0
    cut_offset: int = 0
    note: str = ""

    def describe(self) -> dict:
        """What meta.json, lmforge.json and the registry record about the split."""
        if self.method == "documents":
            return {"method": "documents", "val_fraction": self.val_fraction, "seed": self.seed,
                    "val_filter": self.val_filter, "note": self.note}
        return {"method": "contiguous", "val_fraction": self.val_fraction, "stream_chars": self.stream_chars,
                "cut_char": self.cut_char, "note": self.note}

    def val_chars(self, batches: Iterable[list[str]]) -> int:
        if self.method == "contiguous":
            return self.stream_chars - self.cut_char
        return sum(len(d) for d in split_documents(batches, self.is_val, True))


def plan_split(cleaned: Cleaned, cfg: Config) -> Split:
    """The split data.split asks for, or a contiguous one (with a note saying why) when a document split cannot
    work: a source that yields fewer than MIN_DOCUMENT_SPLIT documents (one file without the preset's
    separator is one document)."""
    d, n, path = cfg.data, cleaned.documents, cleaned.source or "the source"
    method, note = d.split, ""
    if method == "contiguous" and cleaned.val_ok:
        raise LmforgeError("data.val_filter picks val documents, but data.split=contiguous splits by position",
                           hint="--set data.split=documents, or --set data.val_filter=")
    if method == "documents" and n < MIN_DOCUMENT_SPLIT and not cleaned.val_ok:
        method = "contiguous"
        why = (f"data.separator {d.separator!r} never occurs in {path}, so it is one document" if d.separator
               and n == 1 else f"{path} yields {n} document{'s' * (n != 1)}, too few for a document split")
        note = f"{why}: val is the last {d.val_fraction:.0%} of its text instead (data.split=contiguous)"
    if method == "documents":
        return Split("documents", d.val_fraction, d.seed, d.val_filter, is_val=document_split(cleaned, cfg))
    sep = joiner(cfg)
    lengths = np.fromiter((len(doc) for docs in read_spill(cleaned.spill) for doc in docs), np.int64, n)
    pieces = lengths + len(sep)
    pieces[0] -= len(sep)
    ends = np.cumsum(pieces)
    total = int(ends[-1])
    cut = int(total * (1.0 - d.val_fraction))  # as nanoGPT: train = text[:int(n * 0.9)]
    cut_doc = int(np.searchsorted(ends, cut, side="right"))
    if cut_doc >= n:  # val_fraction rounds to nothing: the last character is val
        cut, cut_doc = total - 1, n - 1
    offset = cut - int(ends[cut_doc] - pieces[cut_doc])
    return Split("contiguous", d.val_fraction, joiner=sep, stream_chars=total, cut_char=cut, cut_doc=cut_doc,
                 cut_offset=offset, note=note)


def read_spill(spill: Path, start: int = 0, stop: int | None = None) -> Iterator[list[str]]:
    """The batches of a spill file, or those on the lines starting at byte offsets start..stop-1."""
    with open(spill, encoding="ascii") as f:
        f.seek(start)
        while stop is None or f.tell() < stop:
            line = f.readline()
            if not line:
                return
            yield json.loads(line)


def split_documents(batches: Iterable[list[str]], is_val: np.ndarray, want_val: bool) -> Iterator[str]:
    first = 0
    for docs in batches:
        for d, v in zip(docs, is_val[first:first + len(docs)].tolist()):
            if v == want_val:
                yield d
        first += len(docs)


def stream_pieces(batches: Iterable[list[str]], split: Split, first_doc: int = 0
                  ) -> Iterator[tuple[list[str], np.ndarray]]:
    """Per batch: the pieces of text it contributes to the shards and a val flag per piece. Documents: the
    documents themselves. Contiguous: joiner + document, the piece holding the cut in two."""
    index = first_doc
    for docs in batches:
        if split.method == "documents":
            yield docs, split.is_val[index:index + len(docs)]
            index += len(docs)
            continue
        pieces, flags = [], []
        for doc in docs:
            piece = doc if index == 0 else split.joiner + doc
            if index == split.cut_doc:
                head, tail = piece[:split.cut_offset], piece[split.cut_offset:]
                pieces += [p for p in (head, tail) if p]
                flags += [False] * bool(head) + [True] * bool(tail)
            else:
                pieces.append(piece)
                flags.append(index > split.cut_doc)
            index += 1
        yield pieces, np.array(flags, bool)


def train_side(batches: Iterable[list[str]], split: Split) -> Iterator[str]:
    """The train pieces of the corpus, in order: what the tokenizer is trained on."""
    for pieces, flags in stream_pieces(batches, split):
        yield from (p for p, v in zip(pieces, flags.tolist()) if not v)


def routed_batches(tok: Tokenizer, batches: Iterable[list[str]], split: Split, first_doc: int = 0,
                   last: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(token ids, ids per piece, val flag per piece) batches for shards.write_split_files. Documents are framed
    <bos> ... <eos> each. A contiguous stream is one text: <bos> before its first piece (when this run of
    batches starts at document 0) and <eos> after its last (when `last`: the run ends the corpus)."""
    ids, encode = special_ids(tok), plain_encoder(tok)
    if split.method == "documents":
        for pieces, flags in stream_pieces(batches, split, first_doc):
            if pieces:
                yield *frame(*encode(pieces), ids["bos"], ids["eos"]), flags
        return
    if first_doc == 0 and ids["bos"] is not None:
        yield np.array([ids["bos"]], np.uint32), np.array([1]), np.array([False])
    for pieces, flags in stream_pieces(batches, split, first_doc):
        if pieces:
            yield *encode(pieces), flags
    if last and ids["eos"] is not None:
        yield np.array([ids["eos"]], np.uint32), np.array([1]), np.array([True])


def train_tokenizer(cleaned: Cleaned, cfg: Config, out_dir: Path, split: Split | None = None) -> Tokenizer:
    """Train the configured tokenizer on the train side of the spill file; write out_dir/tokenizer.json.
    Removes meta.json first: the directory is incomplete until the new one lands."""
    (out_dir / META).unlink(missing_ok=True)
    split = split or plan_split(cleaned, cfg)
    t = cfg.tokenizer
    tok = build_tokenizer(t.kind, train_side(read_spill(cleaned.spill), split),
                          vocab_size=t.vocab_size, min_frequency=t.min_frequency, path=t.path)
    tmp = out_dir / f".tokenizer.json.{os.getpid()}.tmp"
    tok.save(str(tmp))
    os.replace(tmp, out_dir / "tokenizer.json")
    return tok


def data_fingerprint(meta: dict) -> str:
    """What a model trained on a prepared directory was trained on, as one hash: the cleaned corpus, the
    tokenizer, the split, and the bytes of both shards."""
    parts = {"format": PREPARED_FORMAT, "corpus_sha256": meta["corpus_sha256"],
             "tokenizer_sha256": meta["tokenizer_sha256"], "split": {k: v for k, v in meta["split"].items()
                                                                       if k != "note"},
             "train_sha256": meta["train"]["sha256"], "val_sha256": meta["val"]["sha256"]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


VAL_TEXT = "val.jsonl"            # the val side as text: one JSON string per val document (contiguous: one)
VAL_TEXT_MAX_BYTES = 16 << 20     # of UTF-8 text kept there (whole documents); promotion scores a sample of it


def write_val_text(cleaned: Cleaned, split: Split, out_dir: Path) -> dict:
    """out_dir/val.jsonl: the val side of the split as the cleaned text the shards were encoded from (each val
    document; for a contiguous split the val part of the stream as one), so models with different tokenizers can
    be scored on the same text (bits per byte, lmforge.runtime.scoring.text_score). Up to VAL_TEXT_MAX_BYTES."""
    h, size, docs, truncated = hashlib.sha256(), 0, 0, False
    tmp = out_dir / f".{VAL_TEXT}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8", errors="surrogatepass") as f:
        texts: Iterable[str]
        if split.method == "documents":
            texts = split_documents(read_spill(cleaned.spill), split.is_val, True)
        else:
            texts = [_contiguous_val_text(cleaned, split)]
        for text in texts:
            n = len(text.encode("utf-8", "surrogatepass"))
            if size + n > VAL_TEXT_MAX_BYTES and docs:
                truncated = True
                break
            line = json.dumps(text) + "\n"
            f.write(line)
            h.update(line.encode("ascii"))
            size, docs = size + n, docs + 1
    os.replace(tmp, out_dir / VAL_TEXT)
    return {"path": VAL_TEXT, "documents": docs, "bytes": size, "sha256": h.hexdigest(), "truncated": truncated}


def _contiguous_val_text(cleaned: Cleaned, split: Split) -> str:
    """The val part of a contiguous split's stream, its first VAL_TEXT_MAX_BYTES (in characters: at most that)."""
    out, size = [], 0
    for pieces, flags in stream_pieces(read_spill(cleaned.spill), split):
        for piece, val in zip(pieces, flags.tolist()):
            if val and size < VAL_TEXT_MAX_BYTES:
                out.append(piece[:VAL_TEXT_MAX_BYTES - size])
                size += len(out[-1])
    return "".join(out)


def shard_meta(cleaned: Cleaned, cfg: Config, tok: Tokenizer, fingerprint: str, *, val_chars: int,
               split: Split, out_dir: Path) -> dict:
    """What meta.json records beside the shard counts (and the val text it writes, write_val_text)."""
    return {"val_text": write_val_text(cleaned, split, out_dir), "tokenizer": {"kind": cfg.tokenizer.kind, "file": "tokenizer.json"},
            "tokenizer_sha256": hashlib.sha256((out_dir / "tokenizer.json").read_bytes()).hexdigest(),
            "special_ids": special_ids(tok), "documents": cleaned.documents, "chars": cleaned.chars,
            "val_chars": val_chars, "split": split.describe(), "corpus_sha256": cleaned.corpus_sha256,
            "source": redact_text(cfg.data.source),  # redacted: no credentials
            "source_fingerprint": fingerprint, "prepared_format": PREPARED_FORMAT,
            "clean_report": cleaned.clean_report, **source_objects(cleaned.source)}


def source_objects(path: Path | str | None) -> dict:
    """{"source_objects": [...]} for a source copied from an object store (each object's key, ETag/version and
    sha256: lmforge.data.objectstore), else {}."""
    manifest = manifest_for(Path(path)) if path else None
    return {"source_objects": manifest["objects"]} if manifest else {}


def write_prepared_meta(out_dir: Path, vocab_size: int, counts: dict, extra: dict) -> dict:
    """meta.json with the data fingerprint."""
    meta = meta_for(vocab_size, counts, extra)
    return write_meta(out_dir, {**meta, "data_fingerprint": data_fingerprint(meta)})


def tokenize_and_shard(cleaned: Cleaned, cfg: Config, out_dir: Path, fingerprint: str = "",
                       timings: dict | None = None) -> dict:
    """Train the tokenizer on the spill file's train side, write it and the shards; delete the spill.
    `timings`, when given, receives the seconds spent training the tokenizer and encoding + sharding."""
    timings = {} if timings is None else timings
    spill = cleaned.spill
    try:
        split = plan_split(cleaned, cfg)
        start = time.perf_counter()
        tok = train_tokenizer(cleaned, cfg, out_dir, split)
        timings["train_tokenizer_s"] = time.perf_counter() - start
        start = time.perf_counter()
        paths = {n: out_dir / f"{n}.bin" for n in ("train", "val")}
        counts = write_split_files(routed_batches(tok, read_spill(spill), split), paths,
                                   shard_dtype(tok.get_vocab_size()))
        meta = write_prepared_meta(out_dir, tok.get_vocab_size(), counts, shard_meta(
            cleaned, cfg, tok, fingerprint, val_chars=split.val_chars(read_spill(spill)), split=split, out_dir=out_dir))
    finally:
        remove_spill(cleaned)
    timings["encode_shard_s"] = time.perf_counter() - start
    return {**meta, "dir": str(out_dir), "cached": False}


def check_fits_context(data: PreparedData, block_size: int) -> None:
    """Training needs more than one context window (block_size + 1 tokens) in each split; say which numbers
    fall short and what would fix them."""
    window = block_size + 1
    split = data.split
    for side, tokens, documents in (("train", data.train_tokens, data.train_documents),
                                    ("val", data.val_tokens, data.val_documents)):
        if tokens > window:
            continue
        total = data.train_tokens + data.val_tokens
        if split.get("method") == "documents":
            cause = (f"the {side} side of the document split has {tokens} tokens in {documents} "
                     f"document(s) of {data.documents}, fewer than one context window ({window})")
            hint = ("--set data.split=contiguous (val = the last part of the text), raise data.val_fraction, "
                    "or --set model.block_size=SMALLER")
        else:
            cause = (f"the corpus has {total} tokens after cleaning, so its {side} side has {tokens}, fewer than "
                     f"one context window ({window})")
            need = int(window / max(min(split.get("val_fraction", 0.1), 1 - split.get("val_fraction", 0.1)),
                                    1e-9)) + 1
            hint = f"use a corpus of at least ~{need} tokens, raise data.val_fraction, or lower model.block_size"
        raise LmforgeError(cause, hint=hint)


def clean_or_reuse(path: Path, cfg: Config, out_dir: Path) -> Cleaned | PreparedData:
    """The cleaned spill file (prepare step 1), with the source fingerprint; or, when out_dir already holds this
    very source prepared (the same bytes: source_fingerprint), that prepared data, and no work."""
    fingerprint = source_fingerprint(path)
    meta = cached_meta(out_dir, fingerprint)
    if meta is not None:
        return PreparedData.from_meta(meta)
    cleaned = finish_cleaning(clean_to_spill(path, cfg, out_dir), path, cfg)
    return dataclasses.replace(cleaned, fingerprint=fingerprint)


def clean_report_markdown(report: list[dict]) -> str:
    lines = ["| step | docs removed | chars removed | docs | chars |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['step']} | {r['docs_removed']} | {r['chars_removed']} | {r['docs']} | {r['chars']} |"
              for r in report]
    return "\n".join(lines) + "\n"


def prepare_corpus(path: Path, cfg: Config, out_dir: Path, timings: dict | None = None) -> dict:
    """All steps in one call, reusing out_dir when it already holds this source prepared with this config.
    `timings`, when given, receives the seconds of each phase (read_clean_s, train_tokenizer_s, encode_shard_s)."""
    timings = {} if timings is None else timings
    fingerprint = source_fingerprint(path)
    meta = cached_meta(out_dir, fingerprint)
    if meta is None:
        start = time.perf_counter()
        cleaned = finish_cleaning(clean_to_spill(path, cfg, out_dir), path, cfg)
        timings["read_clean_s"] = time.perf_counter() - start
        meta = tokenize_and_shard(cleaned, cfg, out_dir, fingerprint, timings)
    return meta
