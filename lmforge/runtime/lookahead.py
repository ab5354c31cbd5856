"""Prompt-lookup drafts for speculative greedy decoding (transformers' `prompt_lookup_num_tokens`): a greedy row
guesses its next tokens by finding the most recent earlier occurrence of its last MAX_NGRAM tokens (then fewer, down
to MIN_NGRAM) in its own context (prompt + generated) and copying what followed; the decode loop (runtime.batch)
then checks the guess in one graph call of 1 + len(draft) tokens and keeps the longest prefix the graph agrees
with, plus the graph's own next token after it. The tokens are exactly those of one call per token; only the
number of graph calls changes.

A row's n-gram index maps each n-gram of its context to the position after its most recent occurrence, updated
incrementally (the n-grams ending at each new token), so a look-up is a few dict reads, never a scan."""
from __future__ import annotations

DEFAULT_LOOKAHEAD = 4  # draft tokens per verifying call by default (Generator(lookahead=...); docs/decode.md)
MAX_LOOKAHEAD = 16  # the most a model directory or an app may ask for
# the variants whose verifying call gives each position the logits of one call per token to float32 rounding (~1e-6;
# tests/test_lookahead.py), so that greedy tokens are the same but on an exact tie. Not int8: its
# DynamicQuantizeMatMul quantises a call's activations with ONE scale for the whole tensor, so the other tokens of
# the call change every position's logits (by ~5e-2 on a small trained model). Not int4: onnxruntime's CPU
# MatMulNBits kernel (accuracy level 4) takes a call's rows in pairs and a row left alone by another path, so a
# token's logits depend on which token shares its pair (up to ~2.5e-2 on the decode benchmark's 384-wide model;
# ~5e-6 at 128 wide, where a row is one block). Not fp16: its kernels for one token and for several round apart
# (up to ~1.5e-3). `python benchmarks/lookahead.py` measures each gap per variant, and what a batch neighbour
# changes (the same mechanisms: int8 and int4 rows are not independent of the rows beside them; docs/decode.md).
EXACT_VARIANTS = ("fp32",)
MAX_NGRAM = 3  # the longest suffix looked up first
MIN_NGRAM = 2  # the shortest: a single token repeats too often to predict what follows it
MAX_WAIT = 16  # steps a row at most waits to draft again after drafts the graph rejected at once


class Lookup:
    """One row's drafting state: its n-gram index and its current draft length (adapted: two more after a draft the
    graph took whole, one less after a partial one, one after a miss). The session counts drafts for all rows
    (BatchSession.stats)."""

    def __init__(self, k_max: int):
        self.k_max = self.k = k_max
        self.index: dict[tuple[int, ...], int] = {}  # n-gram (n = MIN..MAX_NGRAM) -> the position after its latest
        self.indexed = 0  # the n-grams ending at tokens[:indexed] are in the index
        self.wait = 0  # steps left before the next draft (after misses)
        self.misses = 0  # drafts in a row the graph rejected from the first token

    def draft(self, tokens: list[int], room: int) -> list[int]:
        """At most min(k, room) tokens that followed the latest earlier occurrence of the context's last n tokens
        (n = MAX_NGRAM..MIN_NGRAM, the longest found); [] when none occurs, or while the row waits."""
        if self.wait:
            self.wait -= 1
            return []
        end, index = len(tokens) - 1, self.index
        for e in range(max(self.indexed, 0), end):  # the n-grams ending before the last token (not the suffix itself)
            for n in range(MIN_NGRAM, min(MAX_NGRAM, e + 1) + 1):  # (shorter n-grams are never looked up)
                index[tuple(tokens[e - n + 1:e + 1])] = e + 1
        self.indexed = max(self.indexed, end)
        k = min(self.k, room)
        if k <= 0:
            return []
        for n in range(min(MAX_NGRAM, len(tokens)), MIN_NGRAM - 1, -1):
            follow = index.get(tuple(tokens[-n:]))
            if follow is not None:
                draft = tokens[follow:follow + k]
                while len(draft) < k:  # it ran to the end of the context: a period, continued as such
                    draft.append(draft[len(draft) - (len(tokens) - follow)])
                return draft
        return []

    def checked(self, drafted: int, accepted: int) -> None:
        """After a verifying call: `accepted` of `drafted` draft tokens were the graph's own choices."""
        if accepted == drafted:  # (as transformers adapts its assistant's draft length)
            self.k, self.misses = min(self.k_max, self.k + 2), 0
        elif accepted:
            self.k, self.misses = max(1, self.k - 1), 0
        else:  # rejected at once: try again later, later each time (bounded), at one token
            self.k, self.misses = 1, self.misses + 1
            self.wait = min(MAX_WAIT, 2 ** (self.misses - 1) - 1)
