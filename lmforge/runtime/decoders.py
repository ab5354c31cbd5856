"""The decoding state of one batch on each kind of exported graph, as a fixed number of row slots:

    KVBuffers       the fast graph (lmforge.export.fast): GroupQueryAttention over a KV cache allocated once
    PortableKV      the portable attention graph: a KV cache that grows one position per step, rows left-padded
    RecurrentState  a GRU/LSTM graph: a fixed-size state per row, no context limit

Each has the same calls. A row joins a slot with `prefill_slot(slot, ids)` (alone, so its numbers are exactly
those of a batch of one) while the other slots keep their state; `step(ids, active)` runs one token for every
active slot in one call (`active` None: every slot); `release(slot)` frees it; `full(slot)` says the row has no
room for another token. The batch-at-once calls `prefill(rows)` / `step(ids)` / `full()` (lmforge.runtime.scoring) run every slot. Logits come
back on the host as float32 [slots, vocab] (sampling runs in numpy); where a step writes them into one buffer that
stays the same from step to step (the fast graph on the CPU: the graph's own output, bound once), `out` is that
buffer and `step` returns it, so the caller reads the logits where the graph wrote them, with no copy."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from lmforge.runtime.names import row_name

if TYPE_CHECKING:
    from lmforge.runtime.generator import Generator

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def forward(gen: Generator, ids: np.ndarray, mask: np.ndarray | None, state: dict[str, np.ndarray]):
    """One portable-graph call: (last logits [B, V], the new state by input name). ids [B, S]; mask [B, past + S]
    (attention graphs only; positions count the real tokens of each row)."""
    feeds = {"input_ids": ids, **state}
    if mask is not None:
        pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, -ids.shape[1]:]
        feeds.update(position_ids=pos.astype(np.int64), attention_mask=mask)
    out = gen.session.run(gen.output_names, feeds)
    return out[0][:, -1, :], {s["input"]: o for s, o in zip(gen.state_io, out[1:])}


class Slots:
    """What every decoding state shares: per-slot lengths, and the batch-at-once calls in terms of the slot calls."""

    capacity: int  # positions a slot's cache holds
    can_pair = pairs = False  # a one-slot int8/int4 fast graph's calls in pairs of tokens (KVBuffers only)
    rows_graph = False  # every slot extends in one call (KVBuffers.extend_rows: the fast graph's rows graph)

    def __init__(self, slots: int):
        self.slots = slots
        self.lengths = np.zeros(slots, np.int64)  # [slots] tokens in each slot's context
        self.length = memoryview(self.lengths)  # the same, read as Python ints (no numpy call per read)
        self.live = np.zeros(slots, bool)  # [slots] slots holding a row
        self.out: np.ndarray | None = None  # [slots, V] the buffer every step writes its logits into, if there is one

    def full(self, slot: int | None = None) -> bool:
        """Whether `slot` (None: any slot) has no room for one more token."""
        n = self.lengths.max() if slot is None else self.lengths[slot]
        return bool(n + 1 > self.capacity)

    def release(self, slot: int) -> None:
        self.live[slot], self.lengths[slot] = False, 0

    def prefill(self, rows: list[list[int]]) -> np.ndarray:
        """Run whole rows from an empty state, one per slot; the last real logits [B, V]."""
        return np.stack([self.prefill_slot(i, r) for i, r in enumerate(rows)])

    def prefill_slot(self, slot: int, ids: list[int]) -> np.ndarray:
        raise NotImplementedError

    def step(self, next_ids: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError


class KVBuffers(Slots):
    """The fast graph's state: a fixed-size key/value cache per layer, bound once as both past and present
    (GroupQueryAttention writes the new entries in place), and the step inputs bound once and updated in place,
    so a decode step allocates nothing. Rows are right-padded: slot b holds lengths[b] tokens and the graph's
    per-row sequence lengths (seqlens_k) keep each row to its own, so a row decodes exactly as it would alone.
    A row joins by a prefill of its slot alone, through a second binding whose caches are views of that slot's
    part of the shared buffers (bound by pointer), so the other slots are untouched.

    Under the CUDA provider the caches, the step inputs and the logits are OrtValues on the GPU: a step copies
    the new ids, positions and lengths up (a few bytes per row) and the logits [B, V] down, since sampling
    (lmforge.runtime.sampling) runs in numpy on the host. total_sequence_length stays on the host: the kernel
    reads it there.

    Pairs (`pairs`): a one-slot decoder of a generator that speculates on an int8/int4 graph (Generator.rows_in_pairs:
    MatMulNBits, whose CPU kernel runs the last row of an odd count through another kernel) runs every call with an
    even number of tokens, two or more: a call of an odd number (prefill_slot, extend, and a step, which then runs
    as extend) gets one pad token more, written one position past the row (the caches hold capacity + 1 positions)
    and never counted. onnxruntime's attention also gives the same bits for every width of two or more (a call of
    one token rounds apart by ~1e-6, which an int8 activation step can turn into ~1e-2). So its steps and its
    verifying calls give a position the very same logits (tests/test_lookahead.py). A call of two tokens costs
    ~20-35% more than one of a single token (benchmarks/int_kernels.py), so only a row that speculates runs in pairs
    (BatchSession sets `pairs` per row), and its Lookup fills the second token with a free guess where it has no
    draft.

    The rows graph (`rows_graph`: Generator.batch_lookahead, a batch of its rows): `extend_rows` runs several tokens
    for every slot in one call of a second session (model.fast.rows.onnx), whose per-row caches are bound by pointer
    to each slot's part of these same buffers, as _slot_binding binds one."""

    def __init__(self, gen: Generator, slots: int, capacity: int):
        super().__init__(slots)
        self.gen, self.capacity = gen, capacity
        self.device = "cuda" if gen.provider == "CUDAExecutionProvider" else "cpu"
        self.can_pair = slots == 1 and gen.rows_in_pairs and gen.lookahead > 0
        self.pairs = self.can_pair  # this row's calls run in pairs (BatchSession: only a row that speculates)
        self.cache = capacity + self.can_pair  # positions each slot's cache holds: one more for a pad token
        self.pad = gen.pad or 0
        io = gen.dir.io["fast"]
        types = {i.name: i.type for i in gen.session.get_inputs()}
        H, D, V = gen.n_head, gen.head_dim, gen.vocab_size
        self.binding = gen.session.io_binding()  # the step's binding: every buffer bound once, here
        self.kv: list[ort.OrtValue] = []  # [slots, H, cache, D] per state input, bound as its input and its output
        self.kv_io: list[tuple[str, str, type]] = []  # (input name, output name, numpy dtype) per cache
        for s in io["state"]:
            dtype = ORT_DTYPES.get(types.get(s["input"]), np.float32)
            zeros = np.zeros((slots, H, self.cache, D), dtype)  # zeroed: a padded slot is never NaN
            buf = ort.OrtValue.ortvalue_from_numpy(zeros, self.device, 0)
            self.kv.append(buf)
            self.kv_io.append((s["input"], s["output"], dtype))
            self.binding.bind_ortvalue_input(s["input"], buf)
            self.binding.bind_ortvalue_output(s["output"], buf)
        self.ids = np.zeros((slots, 1), np.int64)  # [slots, 1] the token each slot appends
        self.pos = np.zeros((slots, 1), np.int64)  # [slots, 1] its position
        self.seqlens = np.zeros(slots, np.int32)  # [slots] tokens in each cache after the step, minus one
        self.total = np.zeros((), np.int32)  # [] max over slots of seqlens + 1
        self.logits = np.zeros((slots, 1, V), np.float32)  # [slots, 1, V] the step's output
        self.one = np.ones(slots, np.int64)  # [slots] what a step adds to every length
        self.host = {"input_ids": self.ids, "position_ids": self.pos, "seqlens_k": self.seqlens}
        self.values = {n: self._value(a) for n, a in self.host.items()}
        self.values["total_sequence_length"] = ort.OrtValue.ortvalue_from_numpy(self.total)
        self.values["logits"] = self._value(self.logits)
        self.logits_name = io["logits"]
        self._bind(self.binding, self.values)
        if self.device == "cpu":  # the graph writes the logits straight into self.logits: a step returns this view
            self.out = self.logits[:, 0]
        # ids, pos, seqlens, total, lengths as flat memoryviews (the same memory): _step_one writes through them
        self.scalars = tuple(memoryview(a.reshape(-1)) for a in (self.ids, self.pos, self.seqlens, self.total,
                                                                  self.lengths))
        self._extensions: dict[tuple[int, int], tuple] = {}  # extend()'s bindings per (slot, width), on first use
        # the rows graph (Generator.rows_graph): a batch of its rows, on the CPU, checks all its drafts in one call
        self.rows_graph = gen.rows_graph == slots and self.device == "cpu"
        self.rows_session = gen.rows_session() if self.rows_graph else None
        self._row_extensions: dict[int, tuple] = {}  # extend_rows()'s bindings per width, on first use

    def _value(self, array: np.ndarray) -> ort.OrtValue:
        """An OrtValue on the session's device; on the CPU it shares the numpy array's memory."""
        return ort.OrtValue.ortvalue_from_numpy(array, self.device, 0)

    def _bind(self, binding, values: dict) -> None:
        for name, v in values.items():
            if name == "logits":
                binding.bind_ortvalue_output(self.logits_name, v)
            else:
                binding.bind_ortvalue_input(name, v)

    def _run(self, binding, logits: ort.OrtValue, host_logits: np.ndarray | None) -> np.ndarray:
        self.gen.session.run_with_iobinding(binding)
        if self.device == "cpu":
            return host_logits
        binding.synchronize_outputs()
        return logits.numpy()  # the one copy to the host: sampling runs in numpy

    def _run_whole(self, binding, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Run right-padded rows ids [B, S] from position 0 (lengths [B] real tokens each): logits [B, S, V]."""
        B, S = ids.shape
        pos = np.where(np.arange(S) < lengths[:, None], np.arange(S), 0).astype(np.int64)
        host = np.zeros((B, S, self.gen.vocab_size), np.float32) if self.device == "cpu" else None
        logits = (self._value(host) if host is not None else
                  ort.OrtValue.ortvalue_from_shape_and_type((B, S, self.gen.vocab_size), np.float32, self.device, 0))
        # kept until the call returns: an OrtValue made from a numpy array only points at its memory, and the
        # binding holds the pointer, not the array (freed with a temporary dict, it was read as 0 or junk)
        values = {"input_ids": self._value(ids), "position_ids": self._value(pos),
                  "seqlens_k": self._value((lengths - 1).astype(np.int32)),
                  "total_sequence_length": ort.OrtValue.ortvalue_from_numpy(np.array(S, np.int32)), "logits": logits}
        self._bind(binding, values)
        out = self._run(binding, logits, host)
        del values
        return out

    def prefill(self, rows: list[list[int]]) -> np.ndarray:
        """Every slot at once (one call), from position 0; the last real logits [B, V]."""
        if self.pairs:  # (a one-slot decoder: its pad token, as in its every call)
            return self.prefill_slot(0, rows[0])[None]
        B, width = len(rows), max(len(r) for r in rows)
        ids = np.zeros((B, width), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
        self.lengths[:] = [len(r) for r in rows]
        self.live[:] = True
        out = self._run_whole(self.binding, ids, self.lengths)
        self._bind(self.binding, self.values)  # back to the step buffers
        return out[np.arange(B), self.lengths - 1]

    def _slot_binding(self, slot: int):
        """A new binding whose caches are `slot`'s part of the shared buffers, [1, H, cache, D] each, bound by
        pointer as both past and present (what prefill_slot and extend run a single row through)."""
        binding = self.gen.session.io_binding()
        self._bind_slot(binding, slot)
        return binding

    def _bind_slot(self, binding, slot: int, rename=lambda name: name) -> None:
        """Bind `slot`'s part of each shared cache, [1, H, cache, D], by pointer as both the input and the output
        of its names (as `rename` gives them: the rows graph's per-row names)."""
        shape = [1, self.gen.n_head, self.cache, self.gen.head_dim]
        for buf, (name_in, name_out, dtype) in zip(self.kv, self.kv_io):
            ptr = buf.data_ptr() + slot * buf.tensor_size_in_bytes() // self.slots
            binding.bind_input(rename(name_in), self.device, 0, dtype, shape, ptr)
            binding.bind_output(rename(name_out), self.device, 0, dtype, shape, ptr)

    def prefill_slot(self, slot: int, ids: list[int]) -> np.ndarray:
        """Run one row into `slot` alone, from position 0; its last logits [V]. The other slots keep theirs."""
        binding = self._slot_binding(slot)
        n = len(ids)
        run = [*ids, self.pad] if self.pairs and n % 2 else ids  # an even number of tokens (pairs)
        out = self._run_whole(binding, np.array([run], np.int64), np.array([n], np.int64))  # (the pad: position 0)
        self.lengths[slot], self.live[slot] = n, True
        return out[0, n - 1]

    def step(self, next_ids: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """Append one token to each active slot (default: every slot); returns the logits [slots, V]
        (on the CPU `out`, the buffer the next step overwrites). An inactive slot runs a pad token at position 0
        into its own cache and keeps its length: its output is ignored."""
        if active is None and self.slots == 1:
            if self.pairs:  # [token, pad]: every call of the row an even number of tokens
                return self.extend(0, [int(next_ids[0])])
            return self._step_one(int(next_ids[0]))
        lengths = self.lengths
        if active is None:  # the usual step: every slot appends its token
            active = self.one
            self.ids[:, 0] = next_ids
            self.pos[:, 0] = lengths
            self.seqlens[:] = lengths
            self.total[()] = max(lengths.tolist()) + 1  # (a numpy reduction costs a microsecond more)
        else:
            live = np.where(active, lengths, 0)
            self.ids[:, 0] = np.where(active, next_ids, self.pad)
            self.pos[:, 0] = live
            self.seqlens[:] = live
            self.total[()] = live.max() + 1
        out = self._run_step()
        lengths += active
        return out

    def _step_one(self, token: int) -> np.ndarray:
        """step() of a single slot (a stream): the same writes, as Python ints through memoryviews of the bound
        buffers, since at one row each numpy call (~0.4-1 us) costs more than its work."""
        ids, pos, seqlens, total, length = self.scalars
        n = length[0]
        ids[0], pos[0], seqlens[0], total[0] = token, n, n, n + 1
        out = self._run_step()
        length[0] = n + 1
        return out

    def _run_step(self) -> np.ndarray:
        if self.out is not None:  # the CPU: the graph reads the inputs and writes the logits where they are
            self.gen.session.run_with_iobinding(self.binding)
            return self.out
        for name, array in self.host.items():
            self.values[name].update_inplace(array)
        return self._run(self.binding, self.values["logits"], None)[:, 0]


    def extend(self, slot: int, run: list[int]) -> np.ndarray:
        """Append the tokens `run` (W of them) to `slot` in ONE call, at its positions lengths[slot]..; returns the
        logits [W, V] of every position (a buffer the next extend() of this slot and width overwrites). The slot's
        length grows by W; truncate() takes some back (what a rejected draft does). The slot must have room for W
        more tokens; the other slots are untouched. One slot per call: GroupQueryAttention's CPU kernel takes
        several new tokens with a past only at batch 1 ("batch_size must be 1 when sequence_length > 1 and past
        context is given"), so the call binds the slot's part of the caches, as prefill_slot does. CPU only. With
        `pairs` an odd W runs with one pad token more, never counted."""
        W = len(run)
        Wp = W + (self.pairs and W % 2)
        binding, ids, pos, seqlens, total, logits = self._extension(slot, Wp)
        n = int(self.lengths[slot])
        ids[0, :W] = run
        pos[0, :W] = range(n, n + W)  # (a pad token keeps 0 or an earlier call's position: in range)
        seqlens[0], total[()] = n + Wp - 1, n + Wp
        self.gen.session.run_with_iobinding(binding)
        self.lengths[slot] = n + W
        return logits[0, :W]

    def extend_rows(self, runs: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """Append runs [slots, W] (W tokens to each active slot; `active` None: every slot) in ONE call of the rows
        graph (Generator.rows_session: the fast graph with one GroupQueryAttention per row, each over its row's part
        of the caches), at each slot's positions lengths[b]..; returns the logits [slots, W, V] of every position
        (a buffer the next call of this width overwrites). An active slot's length grows by W (truncate() takes
        back what a row rejects, or pads) and it must have room for W more; an inactive slot runs its tokens at
        positions 0.. into its own cache and keeps its length (its output ignored, as in step())."""
        W = runs.shape[1]
        binding, ids, pos, seqlens, logits = self._rows_extension(W)
        lengths = self.lengths
        starts = lengths if active is None else np.where(active, lengths, 0)
        ids[:] = runs
        np.add(starts[:, None], np.arange(W), out=pos)
        seqlens[:] = starts + (W - 1)
        self.rows_session.run_with_iobinding(binding)
        if active is None:
            lengths += W
        else:
            lengths[active] += W
        return logits

    def ran_rows(self, width: int) -> bool:
        """Whether extend_rows() has run a call of `width` tokens per slot (its first allocates)."""
        return width in self._row_extensions

    def _rows_extension(self, width: int) -> tuple:
        """extend_rows()'s binding for W = `width` tokens per slot, made once per width: each slot's part of each
        cache bound by pointer to its row's input and output (_bind_slot), and ids, positions [slots, W],
        seqlens_k [slots] and logits [slots, W, V] as numpy arrays bound by memory."""
        if width not in self._row_extensions:
            binding = self.rows_session.io_binding()
            for r in range(self.slots):
                self._bind_slot(binding, r, lambda name, r=r: row_name(name, r))
            arrays = (np.full((self.slots, width), self.pad, np.int64), np.zeros((self.slots, width), np.int64),
                      np.zeros(self.slots, np.int32), np.zeros((self.slots, width, self.gen.vocab_size), np.float32))
            for name, array in zip(("input_ids", "position_ids", "seqlens_k"), arrays):
                binding.bind_ortvalue_input(name, self._value(array))
            binding.bind_ortvalue_output("logits", self._value(arrays[3]))
            self._row_extensions[width] = (binding, *arrays)
        return self._row_extensions[width]

    def truncate(self, slot: int, length: int) -> None:
        """Keep the first `length` tokens of the slot's cache: the entries past it are overwritten by later calls
        (GroupQueryAttention reads each row only up to its seqlens_k)."""
        self.lengths[slot] = length

    def _extension(self, slot: int, width: int) -> tuple:
        """extend()'s binding for `slot` and W = `width` tokens, made once per (slot, width): the slot's part of
        the caches [1, H, capacity, D] (by pointer), and ids [1, W], positions [1, W], seqlens_k [1], total [] and
        logits [1, W, V] as numpy arrays bound by memory (written in place before each call)."""
        key = (slot, width)
        if key not in self._extensions:
            if self.device != "cpu":
                raise NotImplementedError("extend() runs on the CPU provider only")
            binding = self._slot_binding(slot)
            arrays = (np.full((1, width), self.pad, np.int64), np.zeros((1, width), np.int64), np.zeros(1, np.int32),
                      np.zeros((), np.int32), np.zeros((1, width, self.gen.vocab_size), np.float32))
            self._bind(binding, {"input_ids": self._value(arrays[0]), "position_ids": self._value(arrays[1]),
                                 "seqlens_k": self._value(arrays[2]),
                                 "total_sequence_length": ort.OrtValue.ortvalue_from_numpy(arrays[3]),
                                 "logits": self._value(arrays[4])})
            self._extensions[key] = (binding, *arrays)
        return self._extensions[key]


class PortableKV(Slots):
    """The portable attention graph's state: past keys/values [slots, H, T, D] per layer and an attention mask
    [slots, T] (1 = a real token), T the widest row; rows are left-padded and positions count real tokens only.
    A step returns new arrays one position wider (past and present are separate graph values). A row joins by
    a prefill alone, then its cache is placed at the right end of its slot; columns no live row uses are cut."""

    def __init__(self, gen: Generator, slots: int):
        super().__init__(slots)
        self.gen, self.capacity = gen, gen.block_size
        self.state = gen.empty_state(slots)  # {input name: [slots, H, T, D]}
        self.mask = np.ones((slots, 0), np.int64)  # [slots, T]

    def prefill(self, rows: list[list[int]]) -> np.ndarray:
        """Every slot at once (one call): rows left-padded to one width."""
        width = max(len(r) for r in rows)
        pad = self.gen.pad if self.gen.pad is not None else 0
        ids = np.full((len(rows), width), pad, np.int64)
        self.mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = r
            self.mask[i, width - len(r):] = 1
        self.lengths[:] = [len(r) for r in rows]
        self.live[:] = True
        logits, self.state = forward(self.gen, ids, self.mask, self.gen.empty_state(len(rows)))
        return logits

    def prefill_slot(self, slot: int, ids: list[int]) -> np.ndarray:
        S = len(ids)
        logits, kv = forward(self.gen, np.array([ids], np.int64), np.ones((1, S), np.int64), self.gen.empty_state(1))
        T = self.mask.shape[1]
        if S > T:  # widen every slot on the left
            self.state = {k: np.pad(v, ((0, 0), (0, 0), (S - T, 0), (0, 0))) for k, v in self.state.items()}
            self.mask = np.pad(self.mask, ((0, 0), (S - T, 0)))
            self.mask[~self.live] = 1  # a free slot attends to something: no NaN in its (ignored) rows
            T = S
        for k, v in self.state.items():
            v[slot, :, :T - S] = 0
            v[slot, :, T - S:] = kv[k][0]
        self.mask[slot] = 0
        self.mask[slot, T - S:] = 1
        self.lengths[slot], self.live[slot] = S, True
        self._trim()  # a re-prefilled window may have been the longest row
        return logits[0]

    def release(self, slot: int) -> None:
        super().release(slot)
        self.mask[slot] = 1
        self._trim()

    def _trim(self) -> None:
        """Cut the leading columns that no live row uses, so T stays the longest live row's length."""
        cut = self.mask.shape[1] - int(self.lengths[self.live].max(initial=0))
        if cut > 0:
            self.state = {k: v[:, :, cut:] for k, v in self.state.items()}
            self.mask = self.mask[:, cut:]

    def step(self, next_ids: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        active = np.ones(self.slots, bool) if active is None else active
        pad = self.gen.pad if self.gen.pad is not None else 0
        ids = np.where(active, next_ids, pad).astype(np.int64)[:, None]
        # an inactive slot's new column is masked: a full row waiting to slide keeps its last position in range
        self.mask = np.concatenate([self.mask, active.astype(np.int64)[:, None]], axis=1)
        logits, self.state = forward(self.gen, ids, self.mask, self.state)
        self.lengths += active
        return logits


class RecurrentState(Slots):
    """A GRU/LSTM graph's state: [n_layer, slots, hidden] per state input, zeros before a row's first token. No
    context limit (never full); a row joins by a prefill alone, its state copied into its slot."""

    def __init__(self, gen: Generator, slots: int):
        super().__init__(slots)
        self.gen, self.capacity = gen, 2**62
        self.state = gen.empty_state(slots)  # {input name: [n_layer, slots, hidden]}

    def prefill_slot(self, slot: int, ids: list[int]) -> np.ndarray:
        logits, state = forward(self.gen, np.array([ids], np.int64), None, self.gen.empty_state(1))
        for k, v in self.state.items():
            v[:, slot] = state[k][:, 0]
        self.lengths[slot], self.live[slot] = len(ids), True
        return logits[0]

    def step(self, next_ids: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        active = np.ones(self.slots, bool) if active is None else active
        pad = self.gen.pad if self.gen.pad is not None else 0
        ids = np.where(active, next_ids, pad).astype(np.int64)[:, None]
        logits, self.state = forward(self.gen, ids, None, self.state)
        self.lengths += active
        return logits
