"""Incremental detokenisation: text pieces of a growing list of token ids, decoding only a short tail window per
token, never the whole text, and never emitting half of a multi-byte character (byte-level BPE splits emoji,
Arabic and most non-Latin characters over several tokens)."""
from __future__ import annotations

from tokenizers import Tokenizer

REPLACEMENT = "\ufffd"
MAX_PENDING = 8  # tokens held while the tail decodes to U+FFFD; a UTF-8 character has at most 4 bytes


class TextStream:
    """The text of one row, a token at a time.

    Two offsets into the ids: [prefix, read) is the last emitted window, [read, end) the tokens not yet emitted.
    Each push decodes ids[prefix:] and ids[prefix:read] and emits the difference once it no longer ends in
    U+FFFD (an incomplete character). Decoding from `prefix` rather than `read` keeps what decoders do at a token
    boundary (a joining space, a merged byte) right. A U+FFFD that is really in the text is emitted with the next
    token, or after MAX_PENDING tokens (invalid bytes that no later byte completes), or by flush() at the end.
    For a valid UTF-8 output the pieces join to exactly tokenizer.decode(all ids)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def push(self, token: int) -> str:
        """Add one token id; return the newly complete text ("" while a character is incomplete)."""
        self.ids.append(int(token))
        return self._emit(force=len(self.ids) - self.read >= MAX_PENDING)

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end, or a trailing real U+FFFD)."""
        return self._emit(force=True)

    def _emit(self, force: bool) -> str:
        if self.read == len(self.ids):
            return ""
        done = self.tokenizer.decode(self.ids[self.prefix:self.read])
        text = self.tokenizer.decode(self.ids[self.prefix:])
        if not force and (len(text) <= len(done) or text.endswith(REPLACEMENT)):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(done):]
