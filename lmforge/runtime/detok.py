"""Incremental detokenisation: text pieces of a growing list of token ids, decoding only a short tail window per
token, never the whole text, and never emitting half of a multi-byte character (byte-level BPE splits emoji,
Arabic and most non-Latin characters over several tokens).

Most tokenizers decode by concatenation: a char or word vocabulary joins each id's string (decoder Fuse, after
per-token Replaces), a byte-level BPE joins each id's bytes and reads them as UTF-8 (decoder ByteLevel). For those
`piece_table` reads every id's piece once, at load, and TextStream then streams by table look-up instead of two
tokenizer calls per token, with exactly the same pieces; any other tokenizer (or bytes that are not valid UTF-8)
goes through the tokenizer's own decode."""
from __future__ import annotations

import json

import numpy as np
from tokenizers import Tokenizer

from lmforge.runtime.errors import ModelDirError
from lmforge.runtime.tokenizer import guarded

REPLACEMENT = "\ufffd"
MAX_PENDING = 8  # tokens held while the tail decodes to U+FFFD; a UTF-8 character has at most 4 bytes
CHECKS = 64  # random id sequences a table must decode exactly as the tokenizer does before it is used


class PieceTable:
    """Each id's piece of a concatenating tokenizer: `kind` "text" (decode(ids) == "".join(table[i] for i in ids))
    or "bytes" (decode(ids) == the UTF-8 of b"".join(table[i] for i in ids), invalid bytes as U+FFFD)."""

    def __init__(self, kind: str, table: list):
        self.kind, self.table = kind, table


def _byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character that stands for each byte (tokenizers' ByteLevel)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _kind(decoder: dict | None) -> str | None:
    """"text" for Fuse (after string Replaces), "bytes" for ByteLevel, None for any other decoder."""
    if decoder is None:
        return None
    if decoder.get("type") == "ByteLevel":
        return "bytes"
    steps = decoder.get("decoders") if decoder.get("type") == "Sequence" else [decoder]
    if not steps or steps[-1].get("type") != "Fuse":
        return None
    plain = all(s.get("type") == "Replace" and "String" in (s.get("pattern") or {}) for s in steps[:-1])
    return "text" if plain else None


def piece_table(tokenizer: Tokenizer, vocab_size: int) -> PieceTable | None:
    """The piece of every id below `vocab_size` (ids the tokenizer does not know or skips as special: ""), or None
    when the tokenizer's decoder is not a known concatenating one, or when the table does not decode CHECKS
    random id sequences (every added token among them) exactly as the tokenizer does: the caller then streams
    through the tokenizer. Any failure of the tokenizer here also gives None (the stream reports it)."""
    try:
        return _piece_table(tokenizer, vocab_size)
    except ModelDirError:
        return None


def _piece_table(tokenizer: Tokenizer, vocab_size: int) -> PieceTable | None:
    decoder = tokenizer.decoder
    kind = _kind(json.loads(decoder.__getstate__()) if decoder is not None else None)
    if kind is None:
        return None
    decode = lambda ids: guarded(tokenizer.decode, ids)  # noqa: E731
    singles = guarded(tokenizer.decode_batch, [[i] for i in range(vocab_size)])
    if kind == "text":
        table: list = singles
        join = "".join
    else:
        chars = _byte_level_chars()
        special = {t.content for t in guarded(tokenizer.get_added_tokens_decoder).values() if t.special}
        table = []
        for i in range(vocab_size):
            token = tokenizer.id_to_token(i)
            if token is None or token in special:
                table.append(b"")
            elif all(c in chars for c in token):
                table.append(bytes(chars[c] for c in token))
            else:
                table.append(token.encode("utf-8"))
        join = lambda parts: b"".join(parts).decode("utf-8", "replace")  # noqa: E731
        if any(s != t.decode("utf-8", "replace") for s, t in zip(singles, table)):
            return None
    rng = np.random.default_rng(0)
    added = sorted(i for i in guarded(tokenizer.get_added_tokens_decoder) if i < vocab_size)
    for n in range(CHECKS):
        ids = rng.integers(0, vocab_size, 16).tolist() + added[n::CHECKS]
        rng.shuffle(ids)
        if decode(ids) != join([table[i] for i in ids]):
            return None
    return PieceTable(kind, table)


class TextStream:
    """The text of one row, a token at a time.

    Two offsets into the ids: [prefix, read) is the last emitted window, [read, end) the tokens not yet emitted.
    Each push decodes ids[prefix:] and ids[prefix:read] and emits the difference once it no longer ends in
    U+FFFD (an incomplete character). Decoding from `prefix` rather than `read` keeps what decoders do at a token
    boundary (a joining space, a merged byte) right. A U+FFFD that is really in the text is emitted with the next
    token, or after MAX_PENDING tokens (invalid bytes that no later byte completes), or by flush() at the end.
    For a valid UTF-8 output the pieces join to exactly tokenizer.decode(all ids).

    With a PieceTable (`pieces`) the same pieces come from the table: the window [read, end) is `held`, its
    pieces joined; it is emitted under the same rule. For bytes that is exact while the emitted window is valid
    UTF-8 (decoding then restarts at a character boundary); the first time it is not, the stream goes on through
    the tokenizer for good. Tokenizer calls run inside `guarded` (a Rust panic becomes a ModelDirError)."""

    def __init__(self, tokenizer: Tokenizer, pieces: PieceTable | None = None):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0
        self.table = pieces.table if pieces is not None else None
        self.text = pieces is not None and pieces.kind == "text"
        self.held = "" if self.text else b""  # the table's pieces of ids[read:]

    def push(self, token: int) -> str:
        """Add one token id; return the newly complete text ("" while a character is incomplete)."""
        ids = self.ids
        ids.append(token)
        force = len(ids) - self.read >= MAX_PENDING
        if self.table is None:
            return self._emit(force)
        held = self.held + self.table[token]
        if self.text:
            piece = held
        else:
            try:
                piece = held.decode("utf-8")
            except UnicodeDecodeError as exc:  # incomplete at the end only: it decodes to ... U+FFFD, held back
                if force or exc.reason != "unexpected end of data" or exc.end != len(held):
                    self.table = None  # invalid bytes: the tokenizer decides, from here on
                    return self._emit(force)
                self.held = held
                return ""
        if not force and (not piece or piece[-1] == REPLACEMENT):
            self.held = held
            return ""
        self.prefix, self.read, self.held = self.read, len(ids), held[:0]
        return piece

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end, or a trailing real U+FFFD)."""
        if self.table is not None and self.read < len(self.ids):
            self.table = None  # once per row: the tokenizer decodes the tail exactly
        return self._emit(force=True)

    def _emit(self, force: bool) -> str:
        if self.read == len(self.ids):
            return ""
        done = guarded(self.tokenizer.decode, self.ids[self.prefix:self.read])
        text = guarded(self.tokenizer.decode, self.ids[self.prefix:])
        if not force and (len(text) <= len(done) or text.endswith(REPLACEMENT)):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(done):]
