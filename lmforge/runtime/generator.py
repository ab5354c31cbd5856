"""Generator: an exported model directory loaded once (graph, tokenizer, defaults, serving limits), and the API
apps call, in order of use:

    gen = Generator("artifacts/runs/<run>/model", limits={"max_new_tokens": 512})   # limits: lower only
    gen.generate("Why", max_new_tokens=60, temperature=0.8, top_k=40, seed=0)        # -> str (a list -> list)
    for piece in gen.stream("Why", max_new_tokens=60): ...                           # text pieces, whole characters
    for ev in gen.stream_batch([RowRequest("Why", seed=1), RowRequest("A", temperature=0)]):
        ev.row, ev.text, ev.finish_reason                                            # each row its own request
    session = gen.batch_session(slots=8); session.add(RowRequest(...)); session.step()  # continuous

The decode loop itself is runtime.batch (a flat state machine over rows), on the graph states of
runtime.decoders; sampling is runtime.sampling."""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lmforge.runtime.batch import BatchSession
from lmforge.runtime.decoders import ORT_DTYPES, KVBuffers, PortableKV, RecurrentState
from lmforge.runtime.detok import piece_table
from lmforge.runtime.limits import ServingLimits, lowered
from lmforge.runtime.lookahead import DEFAULT_BY_VARIANT, DEFAULT_LOOKAHEAD, MAX_LOOKAHEAD, BatchEconomy
from lmforge.runtime.modeldir import FAST_VARIANTS, ModelDirError, read_model_dir
from lmforge.runtime.names import row_name
from lmforge.runtime.errors import REEXPORT, TAMPERED, RequestError
from lmforge.runtime.requests import RowEvent, RowRequest, Settled, check_finished, settle
from lmforge.runtime.schema import check_graph
from lmforge.runtime.tokenizer import SafeTokenizer, load_tokenizer
from lmforge.runtime.session import create_session

log = logging.getLogger("lmforge.runtime")
CUDA_FAST = ("fp16",)  # variants whose fast graph the CUDA provider runs whole (GroupQueryAttention in float16)
TAIL_MARGIN = 16  # ids beyond the context a cut prompt's tail must give, so the cut cannot change the kept ids


class Generator:
    """Load an exported model directory once; generate from many threads (each call keeps its own state)."""

    def __init__(self, model_dir: str | Path, variant: str = "fp32", device: str = "auto", threads: int | None = None,
                 fast: bool | None = None, *, limits: dict | None = None, lookahead: int | None = None,
                 batch_lookahead: bool = False):
        """limits: {name: value} of runtime.limits.ServingLimits, each at most the model directory's (lmforge.json
        `limits`, else the built-in defaults): an app may lower them, never raise them.
        fast: use the variant's fast graph (model.fast*.onnx: fused attention over in-place KV buffers);
        None = whenever the directory has it, except that on the CUDA provider only the fp16 fast graph is picked
        by default (GroupQueryAttention's CUDA kernel is float16/bfloat16 only; other variants run their
        portable graph there when they have one). `provider` is the provider that actually runs.
        lookahead: draft tokens a greedy row may check per graph call (prompt-lookup speculation,
        runtime.lookahead; 0 = off); None = lmforge.json `generation.lookahead`, else DEFAULT_LOOKAHEAD (int4: 0).
        Only the CPU fast graph speculates, at fp32, int8 and int4 (`speculates`); elsewhere `self.lookahead` is 0.
        The tokens are the same either way on fp32; on int8/int4 a speculating row's are its graph's called in
        pairs of tokens, which can differ at a near tie (docs/decode.md); `last_stats` counts the calls.
        batch_lookahead: let a full batch of the rows graph's rows (8) speculate too, every drafting row in one call
        (fp32 on the CPU, a directory with model.fast.rows.onnx: `rows_graph`), where the measured costs say it pays
        (runtime.lookahead.BatchEconomy). Off by default: it pays on text that repeats, not on the trained model
        docs/decode.md measures."""
        self.dir = read_model_dir(model_dir)
        self.threads, self.batch_lookahead = threads, bool(batch_lookahead)
        # (where the rows graph may take turns with the step graph: their sessions stop spinning after each run)
        self._stop_spinning = self.batch_lookahead and variant == "fp32" and "rows_graph" in self.dir.io.get("fast", {})
        self._rows_session, self._rows_lock = None, threading.Lock()  # model.fast.rows.onnx, loaded on first use
        self.economy = BatchEconomy()  # whether a batch's verifying calls pay here (runtime.lookahead), measured
        self.limits: ServingLimits = lowered(self.dir.limits, limits)
        self.generation = self.dir.generation  # the defaults of a request (validated by read_model_dir)
        self._open(variant, device, threads, fast)
        self.variant = variant
        spec = self.dir.model
        self.vocab_size = int(spec["vocab_size"])
        self.state_io = self.dir.io["state"]
        self.rnn = any(s.get("kind") == "rnn" for s in self.state_io)
        if self.rnn:  # a recurrent state has no context limit: no prompt truncation, no sliding window
            self.block_size = 2**62
        else:
            self.block_size = int(spec["block_size"])
            self.n_head, self.head_dim = int(spec["n_head"]), int(spec["head_dim"])
        check_graph(self.session, self, self.dir.io["fast"] if self.fast else self.dir.io, str(self.dir.path))
        self.tokenizer = load_tokenizer(self.dir.tokenizer_path, self.vocab_size)
        self.text = SafeTokenizer(self.tokenizer, self.dir.tokenizer_path.name)  # every call guarded
        self.pieces = piece_table(self.tokenizer, self.vocab_size)  # streaming by table look-up, where exact
        self.bos, self.eos, self.pad = (self.dir.tokens.get(k) for k in ("bos", "eos", "pad"))
        self.unk = self.dir.tokens.get("unk")
        self.output_names = [self.dir.io["logits"]] + [s["output"] for s in self.state_io]
        self._probe()
        self.lookahead = self._lookahead(lookahead)
        self.last_stats: dict | None = None  # the graph calls of the last finished stream()/stream_batch() session

    def _open(self, variant: str, device: str, threads: int | None, fast: bool | None) -> None:
        """self.fast, self.session and self.provider: the variant's fast graph or its portable one (__init__)."""
        if variant.startswith("genai"):  # lmforge.export.genai's graphs read batch rows as right-padded
            raise ModelDirError(f"{variant!r} is onnxruntime-genai's graph, which lmforge does not run", hint=f"load "
                                f"{self.dir.path} with onnxruntime_genai.Model, or use variant='fp32' or 'int8'")
        fast_variant = FAST_VARIANTS.get(variant)
        has_fast = fast_variant in self.dir.variants() and "fast" in self.dir.io
        self.fast = has_fast if fast is None else bool(fast)
        if self.fast and not has_fast:
            raise ModelDirError(f"{self.dir.path} has no fast graph for variant {variant!r}", hint="pass fast=False "
                                "(the portable graph), or re-export a gpt model with `lmforge run`: only gpt has one")
        self.session, self.provider = self._load(fast_variant if self.fast else variant, device, threads)
        if (fast is None and self.fast and self.provider == "CUDAExecutionProvider" and variant not in CUDA_FAST
                and variant in self.dir.variants()):
            self.fast = False
            self.session, self.provider = self._load(variant, device, threads)

    def _lookahead(self, asked: int | None) -> int:
        """The draft length asked (None: lmforge.json's `generation.lookahead`, else the default), checked; 0 where
        the graph cannot verify drafts exactly (`speculates`)."""
        if asked is None:
            asked = self.generation.get("lookahead", DEFAULT_BY_VARIANT.get(self.variant, DEFAULT_LOOKAHEAD))
        if isinstance(asked, bool) or not isinstance(asked, int) or not 0 <= asked <= MAX_LOOKAHEAD:
            raise RequestError(f"lookahead must be an integer in [0, {MAX_LOOKAHEAD}] (0 = off), got {asked!r}",
                               hint=f"pass a whole number of draft tokens from 0 to {MAX_LOOKAHEAD}, e.g. 4, or 0 "
                                    "to turn lookahead off")
        return asked if self.speculates else 0

    @property
    def max_width(self) -> int:
        """Tokens one verifying call takes at most: the row's last token and up to `lookahead` drafted ones."""
        return self.lookahead + 1

    @property
    def rows_in_pairs(self) -> bool:
        """Whether this fast graph's CPU kernels take a call's rows in pairs (lmforge.export.fast.ROWS_IN_PAIRS:
        MatMulNBits), so that KVBuffers pads every call to an even number of rows. Read from lmforge.json's
        io.fast.rows_in_pairs: a directory exported before it (int8 as DynamicQuantizeMatMul) has none."""
        return (self.fast and self.provider == "CPUExecutionProvider"
                and self.variant in self.dir.io["fast"].get("rows_in_pairs", ()))

    @property
    def speculates(self) -> bool:
        """Whether a greedy row's draft can be verified in one call with the very tokens of one call per token:
        the fast graph (KVBuffers.extend) on the CPU provider, at fp32 (a row's logits do not depend on the call's
        other tokens, to float32 rounding) and on the graphs whose calls run in pairs of rows (int8, int4: the
        same logits for every even call; runtime.lookahead). Not fp16: its one-token and many-token kernels round
        apart."""
        return self.fast and self.provider == "CPUExecutionProvider" and (self.variant == "fp32" or self.rows_in_pairs)

    @property
    def rows_graph(self) -> int:
        """The rows of the fast graph's rows graph (model.fast.rows.onnx: lmforge.export.fast.build_rows_graph)
        where this generator speculates with it (batch_lookahead): a batch of exactly that many slots checks every
        greedy row's draft in one call (KVBuffers.extend_rows). fp32 on the CPU only (the other variants' calls of
        several tokens round apart from their one-token steps at batch > 1); 0 where there is none."""
        rows = self.dir.io["fast"].get("rows_graph") if self.fast and self.batch_lookahead else None
        if not rows or not self.lookahead or self.variant != "fp32" or "fast-rows" not in self.dir.variants():
            return 0
        return int(rows["rows"])

    def rows_session(self) -> ort.InferenceSession:
        """model.fast.rows.onnx's session, loaded on the first call (its weights are the fast graph's again: a
        second copy in memory, only where a batch speculates), on the CPU with this generator's threads; its
        inputs and outputs checked against lmforge.json's names."""
        with self._rows_lock:
            if self._rows_session is None:
                session, _ = self._load("fast-rows", "cpu", self.threads)
                rows, state = self.rows_graph, self.dir.io["fast"]["state"]
                want_in = {"input_ids", "position_ids", "seqlens_k",
                           *(row_name(s["input"], r) for s in state for r in range(rows))}
                want_out = {"logits", *(row_name(s["output"], r) for s in state for r in range(rows))}
                got_in, got_out = ({i.name for i in session.get_inputs()}, {o.name for o in session.get_outputs()})
                if got_in != want_in or got_out != want_out:
                    raise ModelDirError(f"{self.dir.onnx_path('fast-rows')} does not have the inputs and outputs of "
                                        f"a rows graph of {rows} rows over lmforge.json's caches", hint=TAMPERED)
                self._rows_session = session
        return self._rows_session

    def _probe(self) -> None:
        """One token through the graph, batch 1, at the context's last position, on buffers of the graph's own
        checked sizes: a block_size past the graph's position table, or any other mismatch, is refused here."""
        last = self.block_size - 1
        types = {i.name: i.type for i in self.session.get_inputs()}
        feeds = {"input_ids": np.zeros((1, 1), np.int64)}
        if self.rnn:
            feeds.update(self.empty_state(1))
        else:
            feeds["position_ids"] = np.full((1, 1), last, np.int64)
            if self.fast:
                feeds.update(seqlens_k=np.zeros(1, np.int32), total_sequence_length=np.array(1, np.int32))
                feeds.update({s["input"]: np.zeros((1, self.n_head, 1, self.head_dim),
                                                   ORT_DTYPES.get(types.get(s["input"]), np.float32))
                              for s in self.dir.io["fast"]["state"]})
            else:
                feeds["attention_mask"] = np.ones((1, 1), np.int64)
                feeds.update(self.empty_state(1))
        logits_name = (self.dir.io["fast"] if self.fast else self.dir.io)["logits"]
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the failure is reported below, once, not also by onnxruntime's logger
        try:
            logits = self.session.run([logits_name], feeds, quiet)[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base class but Exception
            reason = str(exc).splitlines()[0].split("Status Message: ")[-1][:160]
            raise ModelDirError(f"{self.dir.path}: the graph fails on one token at position {last}, the last of "
                                f"lmforge.json's block_size {self.block_size if not self.rnn else '-'} ({reason})",
                                hint=TAMPERED) from None
        if logits.shape[-1] != self.vocab_size:
            raise ModelDirError(f"{self.dir.path}: the graph gives {logits.shape[-1]} logits, lmforge.json "
                                f"says vocab_size {self.vocab_size}",
                                hint=f"put back the lmforge.json exported with this graph, or {REEXPORT}")

    def _load(self, files_key: str, device: str, threads: int | None):
        onnx_file = self.dir.onnx_path(files_key)
        try:
            return create_session(str(onnx_file), device, threads, stop_spinning=self._stop_spinning)
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph) as exc:  # truncated / corrupted / hostile file
            raise ModelDirError(f"onnxruntime cannot load {onnx_file}: {str(exc).splitlines()[0][-200:]}",
                                hint=f"copy the whole directory again, or {REEXPORT}; if it names an unsupported "
                                     "opset, upgrade onnxruntime") from None

    # -- public API -------------------------------------------------------------------------------------------
    def generate(self, prompt: str | list[str], **kwargs) -> str | list[str]:
        """Text continuation(s) of prompt(s), one batch. Keyword arguments (RowRequest's): max_new_tokens,
        temperature, top_k, top_p, repetition_penalty, stop (list of strings), seed."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        parts: list[list[str]] = [[] for _ in prompts]
        for ev in self.stream_batch([RowRequest(p, **kwargs) for p in prompts]):
            parts[ev.row].append(ev.text)
            check_finished(ev)
        texts = ["".join(p) for p in parts]
        return texts[0] if isinstance(prompt, str) else texts

    def stream(self, prompt: str, **kwargs) -> Iterator[str]:
        """Yield the continuation of one prompt as text pieces, as soon as each is whole (no split characters)."""
        session = self._session([RowRequest(prompt, **kwargs)])
        while session.running or session.queue:  # (session.busy, less a call per token)
            for ev in session.step():
                if ev.finish_reason:  # (before the last text: a caller may stop reading once it has it)
                    self.last_stats = dict(session.stats)
                if ev.text:
                    yield ev.text
                if ev.finish_reason:
                    check_finished(ev)

    def stream_batch(self, requests: list[RowRequest]) -> Iterator[RowEvent]:
        """Decode a batch in which each row is its own request, streaming RowEvents (row = the request's index).

        Every request is checked first: a RequestError (a limit, a bad parameter) is raised here, before any
        work. Then rows decode together, at most limits.max_batch at once (more wait and join as rows end); each
        row's events join to exactly the text it gets alone (the same greedy tokens; the same seed, the same
        sampled tokens), and its last event has finish_reason "stop" (EOS or a stop string), "length"
        (max_new_tokens) or "deadline" (limits.deadline_s), with the row's token counts."""
        session = self._session(requests)
        if session is None:
            return iter(())

        def events() -> Iterator[RowEvent]:
            while session.busy:
                step = session.step()
                if not session.busy:  # (before the last events: a caller may stop reading once it has them)
                    self.last_stats = dict(session.stats)
                yield from step

        return events()

    def _session(self, requests: list[RowRequest]) -> BatchSession | None:
        """The requests checked (RequestError before any work), queued as rows 0, 1, ... of a session with a slot
        each and a cache just long enough for the longest; None for no requests."""
        settled = [self.settle(r) for r in requests]
        if not settled:
            return None
        need = max(len(ids) + req.max_new_tokens for req, ids in settled)
        session = BatchSession(self, slots=len(settled), capacity=need)
        for i, s in enumerate(settled):
            assert session.enqueue(s) == i  # a fresh session numbers its rows 0, 1, ...: ev.row is the index
        return session

    def batch_session(self, slots: int | None = None) -> BatchSession:
        """A continuous-batching session (runtime.batch.BatchSession): add(RowRequest) rows between step()s."""
        return BatchSession(self, slots=slots)

    def settle(self, request: RowRequest) -> tuple[Settled, list[int]]:
        """A request checked against the limits and the model's defaults, and its prompt's ids."""
        req = settle(request, self.generation, self.limits)
        return req, self.prompt_ids(req.prompt)

    def prompt_ids(self, prompt: str) -> list[int]:
        """The ids decoding starts from: the prompt's last block_size - 1 ids ([pad] for none). Only a tail of the
        text is tokenised, twice as long as needed each try, so a long prompt costs what fits the context."""
        keep = self.block_size - 1
        chars = 4 * keep + 64
        while chars < len(prompt):
            ids = self.encode(prompt[-chars:])
            if len(ids) >= keep + TAIL_MARGIN:  # the tail's first ids (cut mid-word) are far from the kept ones
                return ids[-keep:]
            chars *= 2
        return self.encode(prompt)[-keep:] or [self.pad or 0]

    def encode(self, text: str) -> list[int]:
        """Text -> ids as the model reads them: [bos] + the tokenizer's ids (the one place a prompt is encoded).
        tokenizer.json's post-processor puts <bos> first, as every consumer of the file encodes; an export written
        before it had one gets it prepended here."""
        builtin = self.tokenizer.num_special_tokens_to_add(False) > 0
        ids = self.text.encode(text, add_special_tokens=builtin).ids
        if self.unk is not None and self.unk in ids:
            log.info("prompt has %d unseen token(s); they are read as <unk>", ids.count(self.unk))
        return ids if builtin or self.bos is None else [self.bos] + ids

    def empty_state(self, batch: int) -> dict[str, np.ndarray]:
        """The state inputs of the portable graph before any token: an empty KV cache [batch, heads, 0, head_dim]
        per layer, or a zero recurrent state [n_layer, batch, n_hidden]."""
        if self.rnn:  # fixed shape [n_layer, batch, n_hidden], zeros before the prompt
            return {s["input"]: np.zeros((s["shape"][0], batch, s["shape"][2]), np.float32) for s in self.state_io}
        return {s["input"]: np.zeros((batch, self.n_head, 0, self.head_dim), np.float32) for s in self.state_io}

    def decoder(self, batch: int, capacity: int | None = None) -> KVBuffers | PortableKV | RecurrentState:
        """The decoding state of `batch` row slots (runtime.decoders): KVBuffers on the fast graph (capacity: cache
        positions per row, default the context), PortableKV on the portable attention graph, RecurrentState on a
        GRU/LSTM. `prefill(rows)` then `step(ids)`, each returning the next-token logits [batch, vocab] on the
        host; lmforge.runtime.scoring checks exported graphs through it, runtime.batch decodes with it."""
        if self.fast:
            return KVBuffers(self, batch, min(self.block_size, capacity or self.block_size))
        if self.rnn:
            return RecurrentState(self, batch)
        return PortableKV(self, batch)
