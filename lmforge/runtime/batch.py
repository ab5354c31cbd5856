"""The decode loop: a flat state machine over a batch whose rows are separate requests (llama2.c's generate() is the
model: prefill, then per step sample -> append -> decode text -> check the end -> forward).

Each row is a Row: its own context tokens, RNG, sampling parameters, UTF-8 hold-back (runtime.detok) and
stop-string hold-back (runtime.stops). A BatchSession holds a fixed number of slots in one decoding state
(runtime.decoders); rows wait in a queue, join a free slot between steps (continuous batching), and leave it when
they end. Every step reads top to bottom:

    1. forward  each running row's last token in one batched call (a row whose context is full re-prefills
                its last block_size // 2 tokens instead: the sliding window); a greedy row that is the only one
                appending a token checks a prompt-lookup draft in the same call instead (runtime.lookahead,
                KVBuffers.extend) and takes the verified run of tokens in step 4; with batch_lookahead, the rows
                of a batch of the rows graph's rows check their drafts in one call where that pays
                (KVBuffers.extend_rows, runtime.lookahead.BatchEconomy)
    2. admit    queued rows into free slots: a prefill each, alone, so the other rows are untouched (a row
                with an empty prompt cannot draw <eos> first: its text is never empty)
    3. sample   one call for every row (runtime.sampling.sample_rows; each row its own parameters and RNG)
    4. advance  each row: EOS, text, stop strings, max_new_tokens, deadline -> RowEvents; ended rows leave

Because a row is prefilled alone and the graphs keep each row to its own sequence length (or mask), and its tokens
are drawn from its own RNG, a row's text is exactly what it gets decoded alone: on the fp32 graphs
(tests/test_batch.py). On the int8 and int4 graphs (MatMulNBits) the values of the rows beside a row change
nothing either, but their number does: the last row of an odd count runs through another kernel, and a greedy row
that speculates alone runs its calls two tokens or more wide (KVBuffers.pairs); these round apart by ~1e-6 before
an int8 activation step, which can make it ~1e-2, so a near tie can decode differently in a batch than alone
(benchmarks/lookahead.py measures it). An int8 graph exported before (DynamicQuantizeMatMul: one activation scale
per call) moves a row's logits with its neighbours' values too.

A step costs a few microseconds of Python per row on top of the graph (`lmforge bench decode --loop-cost`), since
each stage does only what can matter: on the fast graph the logits are read where the graph wrote them (the
decoder's `out`, bound once), a step whose rows are all plain greedy samples with one argmax over them, a row
without stop strings does no stop-string work, and text comes from a per-id piece table where the tokenizer
decodes by concatenation (runtime.detok). The results are those of the general path, which runs otherwise."""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from lmforge.runtime.detok import TextStream
from lmforge.runtime.errors import RequestError
from lmforge.runtime.lookahead import Lookup
from lmforge.runtime.requests import RowEvent, RowRequest, Settled, settle
from lmforge.runtime.sampling import sample_rows
from lmforge.runtime.stops import StopStrings

if TYPE_CHECKING:
    from lmforge.runtime.generator import Generator


DEFAULT_SLOTS = 8


class Row:
    """One request's decoding state: what llama2.c's generate() keeps in locals, once per row of a batch."""

    def __init__(self, rid: int, req: Settled, prompt_ids: list[int], gen: Generator):
        self.id, self.req, self.params = rid, req, req.params
        self.tokens = list(prompt_ids)  # the context: prompt ids, then each sampled id (a slide re-prefills its tail)
        self.prompt_tokens = len(prompt_ids)
        self.max_new_tokens = req.max_new_tokens
        self.greedy = req.params.temperature == 0 and req.params.repetition_penalty == 1.0  # argmax, nothing else
        self.rng = np.random.default_rng(req.seed)  # the row's own: the same seed, the same tokens, in any batch
        self.detok = TextStream(gen.tokenizer, gen.pieces)  # UTF-8 hold-back: whole characters
        self.stops = StopStrings(req.stop) if req.stop else None  # stop-string hold-back (None: no stop strings)
        self.pending = ""  # decoded text not yet emitted: at most a stop string's prefix plus one piece
        self.sampled = 0  # tokens sampled, EOS included (what max_new_tokens counts)
        self.generated = 0  # tokens in the text (EOS left out)
        self.last: int | None = None  # the token sampled last step (None: EOS, or none yet), still to be fed
        self.slot = -1  # its slot in the session's decoding state; -1 while queued
        self.finish: str | None = None  # why it ended (requests.FINISH_REASONS)
        self.deadline = time.monotonic() + gen.limits.deadline_s
        # prompt-lookup drafts (runtime.lookahead) for a greedy row, where the generator speculates
        self.lookup = Lookup(gen.lookahead) if self.greedy and gen.lookahead else None
        if self.lookup is not None:
            self.lookup.rate = gen.economy.rate  # (a batch's drafts: what they were worth lately)
        self.run: tuple[int, ...] | None = None  # the tokens of this step's verified run, when it had one

    def accept(self, token: int, eos: int | None) -> str:
        """Take the row's sampled token; return the text now safe to show. Sets `finish` when the row ends."""
        self.sampled += 1
        if token == eos:
            self.last = None
            return self.end("stop")
        self.tokens.append(token)
        self.generated += 1
        self.last = token
        text = self.detok.push(token)
        if self.stops is not None:  # hold back what may start a stop string; cut the text at one
            text = self._held_back(text)
        if self.finish is None and self.sampled >= self.max_new_tokens:
            text += self.end("length")
        return text

    def accept_run(self, tokens: list[int], eos: int | None, now: float) -> str:
        """Take a verified run of greedy tokens (runtime.lookahead), each as accept() takes one, up to the first
        that ends the row (EOS, a stop string, max_new_tokens) or, past the deadline, the first: the tokens after
        it are dropped, never shown or counted. The event then carries every token taken (EOS left out)."""
        text, took = "", []
        for token in tokens:
            text += self.accept(token, eos)
            if token != eos:
                took.append(token)
            if self.finish is not None or now > self.deadline:
                break
        self.run = tuple(took)
        return text

    def end(self, reason: str) -> str:
        """End the row: the text held back for UTF-8 (unless a stop string already cut it), all of it now."""
        if self.finish is not None:
            return ""
        self.finish = reason
        tail = self.detok.flush()
        if self.stops is None:
            return tail
        self._add(tail)
        text, self.pending = self.pending, ""
        return text

    def _held_back(self, piece: str) -> str:
        """The pending text and `piece`, less a tail that may start a stop string (all of it once a stop string
        has ended the row)."""
        self._add(piece)
        keep = 0 if self.finish else self.stops.held()
        text, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return text

    def _add(self, piece: str) -> None:
        base = len(self.pending)
        self.pending += piece
        cut = self.stops.feed(piece)
        if cut is not None:  # the text ends before the stop string
            self.pending, self.finish = self.pending[:base + cut], "stop"

    def event(self, text: str) -> RowEvent:
        """This step's event: the token sampled (none for EOS, or for a row that ended unsampled), or the tokens of
        a verified run, and `text`."""
        if self.run is not None:
            ids, self.run = self.run, None
        else:
            ids = () if self.last is None else (self.last,)
        return RowEvent(self.id, text, ids, self.finish, self.prompt_tokens, self.generated)


class BatchSession:
    """Continuous batching over one Generator (also Generator.batch_session(slots)): `add(request)` queues a row
    (from any thread) and returns its id; each `step()` (from one thread) runs one decode step for every row in a
    slot, lets queued rows join free slots, and returns the RowEvents of that step (one per row); `cancel(id)`
    ends a row at the next step. `busy` says whether any row is queued or running.

        session = BatchSession(gen, slots=8)
        a = session.add(RowRequest("Why", max_new_tokens=40, seed=1))
        while session.busy:
            for ev in session.step():
                ...  # ev.row, ev.text, ev.finish_reason; add() more requests between steps

    slots: rows decoded at once (default 8, at most limits.max_batch; the fast graph's KV cache is allocated for
    all of them at once); capacity: KV positions per slot on the fast graph (default the model's context; less
    only when every row's prompt + max_new_tokens fits it, as stream_batch sizes it)."""

    def __init__(self, gen: Generator, slots: int | None = None, capacity: int | None = None):
        self.gen = gen
        self.slots = max(1, min(int(slots or DEFAULT_SLOTS), gen.limits.max_batch))
        self.capacity = min(gen.block_size, capacity or gen.block_size)
        self.dec = gen.decoder(self.slots, self.capacity)  # runtime.decoders: the graph's state, allocated once
        # whether a lone greedy row checks drafts: fp32, and int8/int4 in a one-slot session (its calls in pairs)
        self.verifies = gen.lookahead > 0 and (not gen.rows_in_pairs or self.slots == 1)
        # [slots, V] each slot's next-token logits: the very buffer the graph writes into when the decoder has one
        self.logits = self.dec.out if self.dec.out is not None else np.zeros((self.slots, gen.vocab_size), np.float32)
        self.seen: np.ndarray | None = None  # [slots, V] bool ids in each context, once a row has a repetition penalty
        self._active = np.zeros(self.slots, bool)  # [slots] the rows a forward step runs
        self._next_ids = [0] * self.slots  # [slots] the token each of them appends (Python ints: the cheapest here)
        self.rows: list[Row | None] = [None] * self.slots  # the row in each slot
        self.live: list[Row] = []  # the rows in slots, in slot order (a new list whenever one joins or leaves)
        self.running = 0  # rows in slots
        self.sampling = 0  # rows in slots that draw (not plain greedy): 0 = one argmax for the whole step
        self.queue: deque[Row] = deque()  # rows waiting for a free slot, in arrival order
        self.cancelled: set[int] = set()
        self._ids = iter(range(2**62))
        self._lock = threading.Lock()
        self.window = max(1, gen.block_size // 2)  # tokens a full row keeps when it slides
        self.runs: dict[int, list[int]] = {}  # slot -> the greedy tokens this step's verifying call gave it
        # graph calls and drafts so far (Generator.last_stats): decode calls (step or extend), prefills (a row
        # joining or sliding), verifying calls, draft tokens checked and taken, tokens sampled by ended rows
        self.stats = dict.fromkeys(("calls", "prefills", "verify_calls", "drafted", "accepted", "tokens"), 0)

    # -- the API ------------------------------------------------------------------------------------------------
    def add(self, request: RowRequest) -> int:
        """Check and queue one request (RequestError at once when it breaks a limit); returns the row's id."""
        return self.enqueue(self.gen.settle(request))

    def enqueue(self, settled: tuple[Settled, list[int]]) -> int:
        req, ids = settled
        if self.capacity < self.gen.block_size and len(ids) + req.max_new_tokens > self.capacity:
            raise RequestError(f"this batch's cache holds {self.capacity} positions, fewer than the prompt's "
                               f"{len(ids)} + max_new_tokens {req.max_new_tokens}",
                               hint=f"ask for at most {max(self.capacity - len(ids), 0)} new tokens, or make the "
                                    f"BatchSession with a larger capacity, up to the model's {self.gen.block_size}")
        with self._lock:
            row = Row(next(self._ids), req, ids, self.gen)
            self.queue.append(row)
        return row.id

    def cancel(self, rid: int) -> None:
        """End row `rid` at the next step (finish_reason "cancelled"): e.g. its client went away."""
        self.cancelled.add(rid)

    @property
    def busy(self) -> bool:
        return bool(self.queue) or self.running > 0

    def step(self) -> list[RowEvent]:
        events: list[RowEvent] = []
        self._forward()  # 1. each running row's last token, in one call
        if self.queue:
            self._admit(events)  # 2. queued rows into free slots
        rows = self.live
        if not rows:
            return events
        ids = self.sample(rows)  # 3. one call: every row's next token
        now, eos, seen, cancelled = time.monotonic(), self.gen.eos, self.seen, self.cancelled
        runs = self.runs
        for row, token in zip(rows, ids):  # 4. each row: EOS, text, stop strings, limits
            if runs and row.slot in runs:  # a verified run of greedy tokens (its slot's logits are not read)
                token = runs[row.slot][-1]
                text = row.accept_run(runs.pop(row.slot), eos, now)
            else:
                text = row.accept(token, eos)
            if row.finish is None and (now > row.deadline or cancelled and row.id in cancelled):
                text += row.end("cancelled" if row.id in cancelled else "deadline")
            events.append(row.event(text))  # every step: its token, its text (may be "": held back)
            if row.finish:
                self._leave(row)
            elif seen is not None:
                seen[row.slot, token] = True  # (a run is greedy: no repetition penalty reads it)
        return events

    def sample(self, rows: list[Row]) -> list[int]:
        """The one sampling call: the next id of each of `rows` (in slot order), from their logits, each row with
        its own parameters and RNG (runtime.sampling.sample_rows). When every row is plain greedy that is one
        argmax over the step's logits where the graph wrote them (what sample_rows gives for such rows)."""
        every = len(rows) == self.slots  # rows in slot order: every slot, so no copy of [slots, V] arrays
        if not self.sampling:
            ids = self.logits.argmax(-1).tolist()
            return ids if every else [ids[r.slot] for r in rows]
        slots = [r.slot for r in rows]
        logits = self.logits if every else self.logits[slots]
        seen = None if self.seen is None else self.seen if every else self.seen[slots]
        return sample_rows(logits, [r.params for r in rows], [r.rng for r in rows], seen).tolist()

    # -- the steps ----------------------------------------------------------------------------------------------
    def _forward(self) -> None:
        dec, next_ids = self.dec, self._next_ids
        lengths, capacity = dec.length, dec.capacity
        stepping, sliding = [], []  # slots that append their row's token; rows whose context is full
        for r in self.rows:
            if r is None or r.last is None:
                continue
            if lengths[r.slot] >= capacity:  # full: no room for one more token
                sliding.append(r)
            else:
                next_ids[r.slot] = r.last
                stepping.append(r.slot)
            r.last = None
        if len(stepping) == 1 and self.gen.lookahead and self._verify(self.rows[stepping[0]]):
            pass  # one greedy row, drafts verified in one call: its tokens are in self.runs
        elif len(stepping) > 1 and dec.rows_graph and self._verify_rows(stepping):
            pass  # the rows in one call of the rows graph, the drafting rows' tokens in self.runs
        elif len(stepping) == self.slots:  # the usual step: every slot appends its token
            t = time.perf_counter()
            out = dec.step(next_ids)
            if dec.rows_graph:  # what a verifying call must beat (runtime.lookahead.BatchEconomy)
                self.gen.economy.stepped(time.perf_counter() - t)
            if out is not self.logits:
                np.copyto(self.logits, out)
        elif stepping:
            active = self._active
            active[:] = False
            active[stepping] = True
            out = dec.step(next_ids, active)  # (a call of every slot, as costly as the usual step: not timed)
            if out is not self.logits:  # (written in place, the other slots' logits are junk that nothing reads)
                self.logits[active] = out[active]
        self.stats["calls"] += bool(stepping)
        self.stats["prefills"] += len(sliding)
        for r in sliding:  # the context is full: re-prefill the row's last `window` tokens
            self.logits[r.slot] = dec.prefill_slot(r.slot, r.tokens[-self.window:])

    def _verify(self, row: Row) -> bool:
        """Speculate for the one running row, when greedy (runtime.lookahead): its last token and a draft of the
        tokens that followed its last n-gram before, through the graph in ONE call (KVBuffers.extend); keep the
        longest prefix of the draft that is the graph's own argmax at each position, plus the argmax after it,
        and give the rest of the cache back. False (nothing run) when the row drafts nothing: no match, no room
        in the cache (a row about to slide steps singly) or in max_new_tokens, or the row is waiting after
        misses. Only one row: GroupQueryAttention takes several new tokens with a past only at batch 1. On the
        int8/int4 graphs only in a one-slot session, whose every call for the row runs an even number of tokens
        (KVBuffers.pairs): in a batch the row's other steps run one token each, which round apart from a verifying
        call's."""
        dec, slot = self.dec, row.slot
        if row.lookup is None or not self.verifies:
            return False
        n = dec.length[slot]
        room = min(dec.capacity - n - 1, row.max_new_tokens - row.sampled - 1)
        draft = row.lookup.draft(row.tokens, room, odd=dec.pairs)  # (pairs: an even width, no pad token)
        if not draft:
            return False
        best = dec.extend(slot, [row.tokens[-1], *draft]).argmax(-1).tolist()  # [W] the graph's choice per position
        took = self._take(row, draft, best, n)
        stats = self.stats
        stats["verify_calls"] += 1
        stats["drafted"] += len(draft)
        stats["accepted"] += took
        return True

    def _verify_rows(self, stepping: list[int]) -> bool:
        """Speculate for every row that appends a token (the slots `stepping`, two or more), where the decoder has
        the rows graph (batch_lookahead, fp32, a batch of its rows: KVBuffers.extend_rows): each greedy row drafts
        as in _verify; where the call pays (below), ONE call runs each row's last token and its draft, right-padded
        with pad tokens to the longest (W = 1 + the longest draft; a slot without a row runs pads at position 0,
        as in a step); each drafting row keeps its verified run as _verify does, and every row's first position's
        logits are its next-token logits (what the rows that did not draft sample from, in step 3). The pads and
        rejected tokens are given back (truncate). False (nothing run) when no row drafts, a row lacks room for W
        more, or the call does not pay: it costs far more than a one-token step (compute, not weight reads, at
        batch 8), so the generator's BatchEconomy times both and weighs the tokens expected."""
        dec, economy = self.dec, self.gen.economy
        rows = [self.rows[s] for s in stepping]
        if not economy.hopeful(len(rows), self.gen.lookahead):
            return False
        length = dec.length
        room = dec.capacity - 1 - max(length[r.slot] for r in rows)  # every row writes W positions
        drafts = [r.lookup.draft(r.tokens, min(room, r.max_new_tokens - r.sampled - 1))
                  if r.lookup is not None and room > 0 else [] for r in rows]
        width = 1 + max(len(d) for d in drafts)
        expected = sum(1 + r.lookup.rate * len(d) if d else 1 for r, d in zip(rows, drafts))
        if width == 1 or not economy.pays(width, expected, len(rows)):
            return False
        ids, active = self._row_runs(rows, drafts, width, stepping)
        n = dec.lengths.copy()
        first = not dec.ran_rows(width)  # (a first call of a width allocates: not timed)
        t = time.perf_counter()
        out = dec.extend_rows(ids, active)  # [slots, W, V]
        np.copyto(self.logits, out[:, 0])
        best = out.argmax(-1).tolist()  # [slots][W] the graph's choice at each position
        stats, taken, drafted = self.stats, 0, 0
        for r, d in zip(rows, drafts):
            if d:
                taken += self._take(r, d, best[r.slot], int(n[r.slot]))
                drafted += len(d)
            else:
                dec.truncate(r.slot, int(n[r.slot]) + 1)  # its last token; the pads are given back
        stats["drafted"] += drafted
        stats["accepted"] += taken
        stats["verify_calls"] += 1
        economy.verified(width, None if first else time.perf_counter() - t, drafted, taken)
        return True

    def _take(self, row: Row, draft: list[int], best: list[int], n: int) -> int:
        """After a verifying call of the row's last token (at position n) and `draft`: keep the longest prefix of the
        draft that is the graph's own choice at each position (`best`) plus the choice after it, as the row's run
        (self.runs), give the rest of the cache back, and let its Lookup adapt. Returns the draft tokens taken."""
        took = 0
        while took < len(draft) and draft[took] == best[took]:
            took += 1
        self.dec.truncate(row.slot, n + 1 + took)  # the last token and the accepted draft; the rest is given back
        row.lookup.checked(len(draft), took)
        self.runs[row.slot] = best[:took + 1]
        return took

    def _row_runs(self, rows: list[Row], drafts: list[list[int]], width: int,
                  stepping: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """_verify_rows' call: ids [slots, W] (each row's last token and its draft, right-padded with pad tokens;
        a slot without a row all pads) and the active slots (None: every slot)."""
        ids = np.full((self.slots, width), self.gen.pad or 0, np.int64)
        for r, d in zip(rows, drafts):
            ids[r.slot, 0] = self._next_ids[r.slot]
            ids[r.slot, 1:1 + len(d)] = d
        if len(rows) == self.slots:
            return ids, None
        active = self._active
        active[:] = False
        active[stepping] = True
        return ids, active

    def _admit(self, events: list[RowEvent]) -> None:
        if not self.queue:
            return
        free = [s for s, r in enumerate(self.rows) if r is None]
        joining = []
        with self._lock:
            while free and self.queue:
                row = self.queue.popleft()
                if row.id in self.cancelled or time.monotonic() > row.deadline:  # ended while it waited
                    events.append(row.event(row.end("cancelled" if row.id in self.cancelled else "deadline")))
                    self.cancelled.discard(row.id)
                    continue
                row.slot = free.pop(0)
                joining.append(row)
        self.stats["prefills"] += len(joining)
        if self.dec.can_pair:  # one slot, an int8/int4 graph: pairs for a row that speculates
            self.dec.pairs = joining[0].lookup is not None
        if len(joining) == self.slots:  # every slot at once (a fresh batch): one batched prefill
            self.logits[:] = self.dec.prefill([r.tokens for r in joining])
        else:
            for r in joining:
                self.logits[r.slot] = self.dec.prefill_slot(r.slot, r.tokens)
        for r in joining:
            if not r.req.prompt and self.gen.eos is not None:  # a continuation of nothing says something: <eos>
                self.logits[r.slot, self.gen.eos] = -np.inf  # may end it, not be all of it (as training samples)
            self.rows[r.slot] = r
            self.running += 1
            self.sampling += not r.greedy
            if r.params.repetition_penalty != 1.0 and self.seen is None:
                self.seen = np.zeros((self.slots, self.gen.vocab_size), bool)
            if self.seen is not None:
                self.seen[r.slot] = False
                self.seen[r.slot, r.tokens] = True
        self.live = [r for r in self.rows if r is not None]

    def _leave(self, row: Row) -> None:
        self.rows[row.slot] = None
        self.live = [r for r in self.rows if r is not None]
        self.running -= 1
        self.sampling -= not row.greedy
        self.stats["tokens"] += row.sampled
        self.dec.release(row.slot)
        self.cancelled.discard(row.id)
        row.slot = -1
