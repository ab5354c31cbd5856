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
# but int4 speculates only when asked: its one-token call is its cheapest kernel (two tokens cost ~35% more,
# benchmarks/int_kernels.py), so a speculating row's pairs cost more than its drafts repay on text that does not
# repeat (0.8x on a random model whose text varies, 1.05x on trained shakespeare-char: benchmarks/lookahead.py)
DEFAULT_BY_VARIANT = {"int4": 0}
MAX_LOOKAHEAD = 16  # the most a model directory or an app may ask for
# Which graphs speculate (Generator.speculates): those whose verifying call gives each position the logits of one
# call per token, so that greedy tokens are the same. fp32: to float32 rounding (~1e-6; tests/test_lookahead.py).
# int8 and int4 (MatMulNBits): onnxruntime's CPU kernel multiplies a call's rows two at a time and runs the last
# row of an odd count through another kernel, and a one-token call's attention rounds ~1e-6 apart, which an int8
# activation step can make ~3e-2 (384 wide); a row's logits never depend on its partner. So a speculating row's
# one-slot decoder runs every call with an even number of tokens, two or more (KVBuffers.pairs), and its steps,
# verifying calls of any width and prefill agree exactly (lmforge.export.fast.ROWS_IN_PAIRS). Not fp16: its kernels
# for one token and for several round apart (up to ~1.5e-3). Not an int8 graph exported before (DynamicQuantizeMatMul:
# one activation scale for a whole call). `python benchmarks/lookahead.py` measures each gap.
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
        self.guessed = False  # the last draft was a free guess (below), which adapts nothing
        self.rate = 0.5  # the share of its draft tokens the graph took lately (moving average; BatchEconomy)

    def draft(self, tokens: list[int], room: int, odd: bool = False) -> list[int]:
        """At most min(k, room) tokens that followed the latest earlier occurrence of the context's last n tokens
        (n = MAX_NGRAM..MIN_NGRAM, the longest found); [] when none occurs, or while the row waits. odd: k rounded
        down to odd, so that [last, *draft] is an even number of tokens (int8/int4, whose calls run in pairs of
        tokens: an odd width costs a pad token, and a call of 6 tokens ~1.6x one of 4; benchmarks/int_kernels.py);
        and where it would draft nothing, one free guess instead (the token that followed the last token's latest
        earlier occurrence: it takes the place of the pad token a step runs anyway)."""
        self.guessed = False
        end, index = len(tokens) - 1, self.index
        for e in range(max(self.indexed, 0), end):  # the n-grams ending before the last token (not the suffix itself)
            for n in range(1, min(MAX_NGRAM, e + 1) + 1):  # (1-grams only for a free guess, never for a draft)
                index[tuple(tokens[e - n + 1:e + 1])] = e + 1
        self.indexed = max(self.indexed, end)
        if self.wait:
            self.wait -= 1
            return self._guess(tokens, room) if odd else []
        k = min(self.k - (odd and self.k % 2 == 0), room)
        if k <= 0:
            return self._guess(tokens, room) if odd else []
        for n in range(min(MAX_NGRAM, len(tokens)), MIN_NGRAM - 1, -1):
            follow = index.get(tuple(tokens[-n:]))
            if follow is not None:
                draft = tokens[follow:follow + k]
                while len(draft) < k:  # it ran to the end of the context: a period, continued as such
                    draft.append(draft[len(draft) - (len(tokens) - follow)])
                return draft
        return self._guess(tokens, room) if odd else []

    def _guess(self, tokens: list[int], room: int) -> list[int]:
        follow = self.index.get((tokens[-1],)) if room > 0 else None
        self.guessed = follow is not None
        return [] if follow is None else [tokens[follow]]

    def checked(self, drafted: int, accepted: int) -> None:
        """After a verifying call: `accepted` of `drafted` draft tokens were the graph's own choices."""
        if self.guessed:  # a free guess: nothing learnt about drafting
            return
        self.rate = 0.7 * self.rate + 0.3 * accepted / drafted
        if accepted == drafted:  # (as transformers adapts its assistant's draft length)
            self.k, self.misses = min(self.k_max, self.k + 2), 0
        elif accepted:
            self.k, self.misses = max(1, self.k - 1), 0
        else:  # rejected at once: try again later, later each time (bounded), at one token
            self.k, self.misses = 1, self.misses + 1
            self.wait = min(MAX_WAIT, 2 ** (self.misses - 1) - 1)


class BatchEconomy:
    """Whether a batch's verifying call pays, from what calls cost here, measured as they run (one per Generator,
    shared by its sessions).

    A batch of the rows graph's rows checks every drafting row in one call (BatchSession._verify_rows,
    KVBuffers.extend_rows), but a call of W tokens per row costs far more than at batch 1: at batch 8 the MatMuls
    are no longer bound by reading the weights, and the per-row attention nodes cost a small model more (a call of
    5 tokens per row took 2.4-2.5x a one-token step on the decode benchmark's 6 x 384 model: benchmarks/spinning.py).
    So it keeps the seconds of a plain full-batch step and of a verifying call of each width (moving
    averages; each width timed TRIES times before it is judged, and again once REFRESH steps passed without a
    verifying call), and a call runs only when the tokens it is expected to give (each row 1, a drafting row also
    its draft's length times its recent acceptance, Lookup.rate, which starts at the generator's recent `rate`) per
    second beat a plain step's by MARGIN; while not even every row's longest draft could pay at that rate, the rows
    do not draft (their n-gram index catches up at the next draft)."""

    TRIES, REFRESH = 2, 512
    MARGIN = 1.15  # a call must be expected to beat plain steps by this much (its expectation errs high)

    def __init__(self, measure: bool = True) -> None:
        """measure False: verify whenever a row drafts, paying or not (tests; the upper bound)."""
        self.measure = measure
        self.step_s: float | None = None  # seconds of a plain full-batch step
        self.call_s: dict[int, float] = {}  # width -> seconds of a verifying call of that many tokens per row
        self.timed: dict[int, int] = {}  # width -> verifying calls timed
        self.since = 0  # full-batch steps since the last verifying call
        self.rate = 0.5  # the share of draft tokens the graph took in verifying calls lately: a new row's prior

    def pays(self, width: int, expected: float, rows: int) -> bool:
        """Whether a verifying call of `width` tokens per row, expected to give `expected` tokens, beats `rows`
        plain steps' tokens per second."""
        if not self.measure:
            return True
        if self.step_s is None:  # a plain step timed first
            return False
        if self.timed.get(width, 0) < self.TRIES or self.since > self.REFRESH:
            return True
        return expected / self.call_s[width] > self.MARGIN * rows / self.step_s

    def hopeful(self, rows: int, k: int) -> bool:
        """(Asked once per step that could verify.) Whether a call could pay at all this step: every row drafting
        `k` tokens, taken at the recent rate (else the rows do not even draft: BatchSession._verify_rows)."""
        self.since += 1
        return self.pays(k + 1, rows * (1 + self.rate * k), rows)

    def stepped(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s is None else 0.8 * self.step_s + 0.2 * seconds

    def verified(self, width: int, seconds: float | None, drafted: int, taken: int) -> None:
        """After a verifying call of `width` tokens per row that took `seconds` (None: not timed, a first call)."""
        self.since = 0
        if drafted:
            self.rate = 0.8 * self.rate + 0.2 * taken / drafted
        if seconds is None:
            return
        old = self.call_s.get(width)
        self.call_s[width] = seconds if old is None else 0.7 * old + 0.3 * seconds
        self.timed[width] = self.timed.get(width, 0) + 1
