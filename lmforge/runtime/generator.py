"""Autoregressive decoding over an exported model directory with onnxruntime and numpy only: prefill, a cached
decode loop, batches of prompts of different lengths (left padding), streaming text, stop strings, EOS, and a
sliding window when the output passes the model's context."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from lmforge.runtime.detok import TextStream
from lmforge.runtime.errors import RequestError
from lmforge.runtime.modeldir import FAST_VARIANTS, ModelDirError, read_model_dir
from lmforge.runtime.sampling import SamplingParams, sample_next
from lmforge.runtime.session import create_session

log = logging.getLogger("lmforge.runtime")
CUDA_FAST = ("fp16",)  # variants whose fast graph the CUDA provider runs whole (GroupQueryAttention in float16)


@dataclass
class Request:
    max_new_tokens: int
    params: SamplingParams
    stop: tuple[str, ...]
    seed: int | None


class Generator:
    """Load an exported model directory once; generate from many threads (each call keeps its own state)."""

    def __init__(self, model_dir: str | Path, variant: str = "fp32", device: str = "auto", threads: int | None = None,
                 fast: bool | None = None):
        """fast: use the variant's fast graph (model.fast*.onnx: fused attention over in-place KV buffers);
        None = whenever the directory has it, except that on the CUDA provider only the fp16 fast graph is picked
        by default (GroupQueryAttention's CUDA kernel is float16/bfloat16 only; other variants run their
        portable graph there when they have one). `provider` is the provider that actually runs."""
        self.dir = read_model_dir(model_dir)
        if variant.startswith("genai"):  # lmforge.export.genai's graphs read batch rows as right-padded
            raise ModelDirError(f"{variant!r} is onnxruntime-genai's graph: load {self.dir.path} with "
                                f"onnxruntime_genai.Model; lmforge decodes the same weights with variant='fp32'/'int8'")
        fast_variant = FAST_VARIANTS.get(variant)
        has_fast = fast_variant in self.dir.variants() and "fast" in self.dir.io
        self.fast = has_fast if fast is None else bool(fast)
        if self.fast and not has_fast:
            raise ModelDirError(f"{self.dir.path} has no fast graph for variant {variant!r}; "
                                f"re-export it with lmforge.export.modeldir (gpt models) or pass fast=False")
        self.session, self.provider = self._load(fast_variant if self.fast else variant, device, threads)
        if (fast is None and self.fast and self.provider == "CUDAExecutionProvider" and variant not in CUDA_FAST
                and variant in self.dir.variants()):
            self.fast = False
            self.session, self.provider = self._load(variant, device, threads)
        self.variant = variant
        try:
            self.tokenizer = Tokenizer.from_file(str(self.dir.tokenizer_path))
        except Exception as exc:  # tokenizers raises a plain Exception on malformed JSON
            raise ModelDirError(f"cannot read tokenizer {self.dir.tokenizer_path}: "
                                f"{str(exc).splitlines()[0][:160]}") from None
        spec = self.dir.model
        self.block_size = int(spec["block_size"])
        self.vocab_size = int(spec["vocab_size"])
        if self.tokenizer.get_vocab_size() > self.vocab_size:
            raise ModelDirError(f"tokenizer has {self.tokenizer.get_vocab_size()} tokens but the model only "
                             f"{self.vocab_size}: the tokenizer does not belong to this model")
        self.state_io = self.dir.io["state"]
        self.rnn = any(s.get("kind") == "rnn" for s in self.state_io)
        if self.rnn:  # a recurrent state has no context limit: no prompt truncation, no sliding window
            self.block_size = 2**62
        else:
            self.n_head, self.head_dim = int(spec["n_head"]), int(spec["head_dim"])
        self.bos, self.eos, self.pad = (self.dir.tokens.get(k) for k in ("bos", "eos", "pad"))
        self.unk = self.dir.tokens.get("unk")
        self.output_names = [self.dir.io["logits"]] + [s["output"] for s in self.state_io]

    def _load(self, files_key: str, device: str, threads: int | None):
        onnx_file = self.dir.onnx_path(files_key)
        try:
            return create_session(str(onnx_file), device, threads)
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph) as exc:  # truncated / corrupted / hostile file
            raise ModelDirError(f"onnxruntime cannot load {onnx_file}: {str(exc).splitlines()[0][-200:]}") from None

    # -- public API -------------------------------------------------------------------------------------------
    def generate(self, prompt: str | list[str], **kwargs) -> str | list[str]:
        """Text continuation(s) of prompt(s). Keyword arguments: max_new_tokens, temperature, top_k, top_p,
        repetition_penalty, stop (list of strings), seed."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        texts = [""] * len(prompts)
        for row, piece in self._pieces(prompts, self._request(**kwargs)):
            texts[row] += piece
        return texts[0] if isinstance(prompt, str) else texts

    def stream(self, prompt: str, **kwargs) -> Iterator[str]:
        """Yield the continuation of one prompt as text pieces, as soon as each is whole (no split characters)."""
        for _, piece in self._pieces([prompt], self._request(**kwargs)):
            yield piece

    def encode(self, text: str) -> list[int]:
        # tokenizer.json's post-processor puts <bos> first (as every consumer of the file encodes); an export
        # written before it had one gets it prepended here
        builtin = self.tokenizer.num_special_tokens_to_add(False) > 0
        ids = self.tokenizer.encode(text, add_special_tokens=builtin).ids
        if self.unk is not None and self.unk in ids:
            log.info("prompt has %d unseen token(s); they are read as <unk>", ids.count(self.unk))
        return ids if builtin or self.bos is None else [self.bos] + ids

    # -- internals --------------------------------------------------------------------------------------------
    def _request(self, max_new_tokens: int | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, repetition_penalty: float = 1.0, stop: list[str] | None = None,
                 seed: int | None = None) -> Request:
        g = self.dir.generation
        n = int(max_new_tokens if max_new_tokens is not None else g.get("max_new_tokens", 100))
        if n < 1:
            raise RequestError(f"max_new_tokens must be >= 1, got {n}")
        params = SamplingParams(temperature=float(g.get("temperature", 1.0) if temperature is None else temperature),
                                top_k=int(g.get("top_k", 0) if top_k is None else top_k),
                                top_p=float(g.get("top_p", 1.0) if top_p is None else top_p),
                                repetition_penalty=float(repetition_penalty))
        return Request(n, params, tuple(s for s in (stop or []) if s), seed)

    def empty_state(self, batch: int) -> dict[str, np.ndarray]:
        """The state inputs of the portable graph before any token: an empty KV cache [batch, heads, 0, head_dim]
        per layer, or a zero recurrent state [n_layer, batch, n_hidden]."""
        if self.rnn:  # fixed shape [n_layer, batch, n_hidden], zeros before the prompt
            return {s["input"]: np.zeros((s["shape"][0], batch, s["shape"][2]), np.float32) for s in self.state_io}
        return {s["input"]: np.zeros((batch, self.n_head, 0, self.head_dim), np.float32) for s in self.state_io}

    def _forward(self, ids: np.ndarray, mask: np.ndarray, state: dict[str, np.ndarray]):
        if self.rnn:  # no positions, no attention mask
            out = self.session.run(self.output_names, {"input_ids": ids, **state})
            return out[0][:, -1, :], {s["input"]: o for s, o in zip(self.state_io, out[1:])}
        pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, -ids.shape[1]:]
        feeds = {"input_ids": ids, "position_ids": pos.astype(np.int64), "attention_mask": mask, **state}
        out = self.session.run(self.output_names, feeds)
        return out[0][:, -1, :], {s["input"]: o for s, o in zip(self.state_io, out[1:])}

    def _prefill(self, rows: list[list[int]]):
        """Left-pad rows to one length and run them; positions count real tokens only."""
        if self.rnn and len(rows) > 1:  # padding would run through a recurrent state: prefill row by row
            parts = [self._prefill([r]) for r in rows]
            state = {k: np.concatenate([p[1][k] for p in parts], axis=1) for k in parts[0][1]}
            return np.concatenate([p[0] for p in parts]), state, np.ones((len(rows), max(map(len, rows))), np.int64)
        width = max(len(r) for r in rows)
        pad = self.pad if self.pad is not None else 0
        ids = np.full((len(rows), width), pad, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = r
            mask[i, width - len(r):] = 1
        logits, state = self._forward(ids, mask, self.empty_state(len(rows)))
        return logits, state, mask

    def decoder(self, batch: int, capacity: int | None = None) -> KVBuffers | PortableState:
        """The decoding state generate() and stream() run on: KVBuffers on the fast graph (capacity: cache
        positions, default the context), else PortableState. `prefill(rows)` then `step(ids)`, each returning the
        next-token logits [batch, vocab] on the host; lmforge.runtime.scoring checks exported graphs through it."""
        if self.fast:
            return KVBuffers(self, batch, min(self.block_size, capacity or self.block_size))
        return PortableState(self)

    def _pieces(self, prompts: list[str], req: Request) -> Iterator[tuple[int, str]]:
        if not prompts:
            return
        rng = np.random.default_rng(req.seed)
        window = max(1, self.block_size // 2)  # tokens kept when the context is full
        tokens = [self.encode(p)[-(self.block_size - 1):] or [self.pad or 0] for p in prompts]
        B = len(tokens)
        seen = np.zeros((B, self.vocab_size), bool) if req.params.repetition_penalty != 1.0 else None
        if seen is not None:
            for i, t in enumerate(tokens):
                seen[i, t] = True
        dec = self.decoder(B, max(map(len, tokens)) + req.max_new_tokens)
        logits = dec.prefill(tokens)
        streams = [TextStream(self.tokenizer) for _ in range(B)]
        texts, emitted = [""] * B, [0] * B  # text so far, and how much of it was yielded
        done, stopped = np.zeros(B, bool), np.zeros(B, bool)
        longest_stop = max(map(len, req.stop), default=0)

        def add(i: int, piece: str) -> None:
            """Append a piece to row i's text, cut it at a stop string (searched in the new tail only)."""
            start = max(0, len(texts[i]) - longest_stop + 1)
            text = texts[i] + piece
            cuts = [c for c in (text.find(s, start) for s in req.stop) if c >= 0]
            if cuts:
                text, done[i], stopped[i] = text[:min(cuts)], True, True
            texts[i] = text

        def ready(i: int, final: bool) -> str:
            """Row i's text not yet yielded, less a tail that may be the start of a stop string."""
            text = texts[i]
            hold = 0 if final or stopped[i] else max((k for s in req.stop for k in range(1, len(s))
                                                       if text.endswith(s[:k])), default=0)
            piece = text[emitted[i]:len(text) - hold]
            emitted[i] += len(piece)
            return piece

        for step in range(req.max_new_tokens):
            nxt = sample_next(logits, req.params, rng, seen)
            for i in range(B):
                if done[i]:
                    continue
                tok = int(nxt[i])
                if tok == self.eos:
                    done[i] = True
                    continue
                tokens[i].append(tok)
                if seen is not None:
                    seen[i, tok] = True
                piece = streams[i].push(tok)
                if piece:
                    add(i, piece)
                    if piece := ready(i, final=False):
                        yield i, piece
            if done.all() or step == req.max_new_tokens - 1:
                break
            if dec.full():  # slide: re-prefill the last `window` tokens of every row
                logits = dec.prefill([t[-window:] for t in tokens])
            else:
                logits = dec.step(np.where(done, self.pad or 0, nxt))
        for i in range(B):  # what is still held: an incomplete or real trailing U+FFFD, a stop-string prefix
            if not stopped[i]:
                add(i, streams[i].flush())
            if piece := ready(i, final=True):
                yield i, piece


class PortableState:
    """One call's state on the portable graph: left-padded rows, an attention mask and a KV cache that grows by
    one position per step (past and present are separate arrays; session.run with numpy feeds)."""

    def __init__(self, gen: Generator):
        self.gen, self.state, self.mask = gen, None, None

    def prefill(self, rows: list[list[int]]) -> np.ndarray:
        logits, self.state, self.mask = self.gen._prefill(rows)
        return logits

    def step(self, next_ids: np.ndarray) -> np.ndarray:
        self.mask = np.concatenate([self.mask, np.ones((len(self.mask), 1), np.int64)], axis=1)
        logits, self.state = self.gen._forward(np.asarray(next_ids, np.int64)[:, None], self.mask, self.state)
        return logits

    def full(self) -> bool:
        return self.mask.shape[1] + 1 > self.gen.block_size


ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class KVBuffers:
    """One call's state on the fast graph: a fixed-size key/value cache [B,H,capacity,D] per layer, bound once as
    both past and present (GroupQueryAttention writes the new entries in place), and the step inputs bound once
    and updated in place, so a decode step allocates nothing. Rows are right-padded: row b holds lengths[b]
    tokens, so batched rows decode exactly as they would alone.

    Under the CUDA provider the caches, the step inputs and the logits are OrtValues on the GPU: a step copies
    the new ids, positions and lengths up (a few bytes per row) and the logits [B, V] down, since sampling
    (lmforge.runtime.sampling) runs in numpy on the host. total_sequence_length stays on the host: the kernel
    reads it there."""

    def __init__(self, gen: Generator, batch: int, capacity: int):
        self.gen, self.capacity = gen, capacity
        self.device = "cuda" if gen.provider == "CUDAExecutionProvider" else "cpu"
        io = gen.dir.io["fast"]
        types = {i.name: i.type for i in gen.session.get_inputs()}
        self.binding = gen.session.io_binding()
        self.kv: list[ort.OrtValue] = []  # one buffer per state input, bound as its input and its output
        for s in io["state"]:
            zeros = np.zeros((batch, gen.n_head, capacity, gen.head_dim), ORT_DTYPES.get(types.get(s["input"]),
                                                                                        np.float32))
            buf = ort.OrtValue.ortvalue_from_numpy(zeros, self.device, 0)  # zeroed: padded slots are never NaN
            self.kv.append(buf)
            self.binding.bind_ortvalue_input(s["input"], buf)
            self.binding.bind_ortvalue_output(s["output"], buf)
        self.lengths = np.zeros(batch, np.int64)
        self.ids, self.pos = np.zeros((batch, 1), np.int64), np.zeros((batch, 1), np.int64)
        self.seqlens, self.total = np.zeros(batch, np.int32), np.zeros((), np.int32)
        self.logits = np.zeros((batch, 1, gen.vocab_size), np.float32)
        self.host = {"input_ids": self.ids, "position_ids": self.pos, "seqlens_k": self.seqlens}
        self.values = {n: self._value(a) for n, a in self.host.items()}
        self.values["total_sequence_length"] = ort.OrtValue.ortvalue_from_numpy(self.total)
        self.values["logits"] = self._value(self.logits)
        self.logits_name = io["logits"]

    def _value(self, array: np.ndarray) -> ort.OrtValue:
        """An OrtValue on the session's device; on the CPU it shares the numpy array's memory."""
        return ort.OrtValue.ortvalue_from_numpy(array, self.device, 0)

    def _bind(self, values: dict) -> None:
        for name, v in values.items():
            if name == "logits":
                self.binding.bind_ortvalue_output(self.logits_name, v)
            else:
                self.binding.bind_ortvalue_input(name, v)

    def _run(self, logits: ort.OrtValue, host_logits: np.ndarray | None) -> np.ndarray:
        self.gen.session.run_with_iobinding(self.binding)
        if self.device == "cpu":
            return host_logits
        self.binding.synchronize_outputs()
        return logits.numpy()  # the one copy to the host: sampling runs in numpy

    def full(self) -> bool:
        return self.lengths.max() + 1 > self.capacity

    def prefill(self, rows: list[list[int]]) -> np.ndarray:
        """Run whole rows from an empty cache; returns the last real logits [B,V]."""
        B, width = len(rows), max(len(r) for r in rows)
        ids, pos = np.zeros((B, width), np.int64), np.zeros((B, width), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)], pos[i, :len(r)] = r, np.arange(len(r))
        self.lengths[:] = [len(r) for r in rows]
        host = np.zeros((B, width, self.gen.vocab_size), np.float32) if self.device == "cpu" else None
        logits = (self._value(host) if host is not None else
                  ort.OrtValue.ortvalue_from_shape_and_type((B, width, self.gen.vocab_size), np.float32, self.device, 0))
        self._bind({"input_ids": self._value(ids), "position_ids": self._value(pos),
                    "seqlens_k": self._value((self.lengths - 1).astype(np.int32)),
                    "total_sequence_length": ort.OrtValue.ortvalue_from_numpy(np.array(width, np.int32)),
                    "logits": logits})
        out = self._run(logits, host)
        self._bind(self.values)  # back to the step buffers
        return out[np.arange(B), self.lengths - 1]

    def step(self, next_ids: np.ndarray) -> np.ndarray:
        """Append one token per row; returns the logits [B,V] (on the CPU a view reused by the next step)."""
        self.ids[:, 0] = next_ids
        self.pos[:, 0] = self.lengths
        self.seqlens[:] = self.lengths
        self.total[...] = self.lengths.max() + 1
        if self.device != "cpu":
            for name, array in self.host.items():
                self.values[name].update_inplace(array)
        out = self._run(self.values["logits"], self.logits)
        self.lengths += 1
        return out[:, 0]
