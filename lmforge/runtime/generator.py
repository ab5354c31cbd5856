"""Autoregressive decoding over an exported model directory with onnxruntime and numpy only: prefill, a cached
decode loop, batches of prompts of different lengths (left padding), streaming text, stop strings, EOS, and a
sliding window when the output passes the model's context."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tokenizers import Tokenizer

import onnxruntime as ort
from lmforge.runtime.modeldir import FAST_VARIANTS, ModelDirError, read_model_dir
from lmforge.runtime.sampling import SamplingParams, sample_next
from lmforge.runtime.session import create_session

log = logging.getLogger("lmforge.runtime")


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
        None = whenever the directory has it."""
        self.dir = read_model_dir(model_dir)
        if variant.startswith("genai"):  # lmforge.export_genai's graphs read batch rows as right-padded
            raise ModelDirError(f"{variant!r} is onnxruntime-genai's graph: load {self.dir.path} with "
                                f"onnxruntime_genai.Model; lmforge decodes the same weights with variant='fp32'/'int8'")
        fast_variant = FAST_VARIANTS.get(variant)
        has_fast = fast_variant in self.dir.variants() and "fast" in self.dir.io
        self.fast = has_fast if fast is None else bool(fast)
        if self.fast and not has_fast:
            raise ModelDirError(f"{self.dir.path} has no fast graph for variant {variant!r}; "
                                f"re-export it with lmforge.export (gpt models) or pass fast=False")
        onnx_file = self.dir.onnx_path(fast_variant if self.fast else variant)
        try:
            self.session, self.provider = create_session(str(onnx_file), device, threads)
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
                ort.capi.onnxruntime_pybind11_state.InvalidGraph) as exc:  # truncated / corrupted / hostile file
            raise ModelDirError(f"onnxruntime cannot load {onnx_file}: {str(exc).splitlines()[0][-200:]}") from None
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
            raise ValueError(f"tokenizer has {self.tokenizer.get_vocab_size()} tokens but the model only "
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
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if self.unk is not None and self.unk in ids:
            log.info("prompt has %d unseen token(s); they are read as <unk>", ids.count(self.unk))
        return ([self.bos] if self.bos is not None else []) + ids

    # -- internals --------------------------------------------------------------------------------------------
    def _request(self, max_new_tokens: int | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, repetition_penalty: float = 1.0, stop: list[str] | None = None,
                 seed: int | None = None) -> Request:
        g = self.dir.generation
        n = int(max_new_tokens if max_new_tokens is not None else g.get("max_new_tokens", 100))
        if n < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {n}")
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
        run = KVBuffers(self, B, min(self.block_size, max(map(len, tokens)) + req.max_new_tokens)) if self.fast else None
        logits, state, mask = run.prefill(tokens) if run else self._prefill(tokens)
        generated: list[list[int]] = [[] for _ in range(B)]
        emitted = [""] * B
        done = np.zeros(B, bool)
        texts = [""] * B
        for step in range(req.max_new_tokens):
            nxt = sample_next(logits, req.params, rng, seen)
            for i in range(B):
                if done[i]:
                    continue
                tok = int(nxt[i])
                if tok == self.eos:
                    done[i] = True
                    continue
                generated[i].append(tok)
                tokens[i].append(tok)
                if seen is not None:
                    seen[i, tok] = True
                text = self.tokenizer.decode(generated[i])
                cut = min((text.find(s) for s in req.stop if s in text), default=-1)
                if cut >= 0:
                    text, done[i] = text[:cut], True
                texts[i] = text
                if not done[i] and text.endswith("\ufffd"):
                    continue  # wait for the rest of a multi-byte character
                if not done[i]:  # hold back a tail that may be the start of a stop string
                    text = text[:len(text) - max((k for s in req.stop for k in range(1, len(s))
                                                  if text.endswith(s[:k])), default=0)]
                if len(text) > len(emitted[i]) and text.startswith(emitted[i]):
                    yield i, text[len(emitted[i]):]
                    emitted[i] = text
            if done.all() or step == req.max_new_tokens - 1:
                break
            if run is not None:  # fast path: per-row lengths, cache written in place
                if run.lengths.max() + 1 > run.capacity:
                    logits = run.prefill([t[-window:] for t in tokens])[0]
                else:
                    logits = run.step(np.where(done, self.pad or 0, nxt))
                continue
            if mask.shape[1] + 1 > self.block_size:  # slide: re-prefill the last `window` tokens of every row
                logits, state, mask = self._prefill([t[-window:] for t in tokens])
                continue
            step_ids = np.where(done, self.pad or 0, nxt).astype(np.int64)[:, None]
            mask = np.concatenate([mask, np.ones((B, 1), np.int64)], axis=1)
            logits, state = self._forward(step_ids, mask, state)
        for i, text in enumerate(texts):  # what a stop-string prefix held back
            if len(text) > len(emitted[i]) and text.startswith(emitted[i]) and not text.endswith("\ufffd"):
                yield i, text[len(emitted[i]):]


class KVBuffers:
    """One call's state on the fast graph: a fixed-size key/value cache [B,H,capacity,D] per layer, bound once as
    both past and present (GroupQueryAttention writes the new entries in place), and the step inputs bound once
    and updated in place, so a decode step allocates nothing. Rows are right-padded: row b holds lengths[b]
    tokens, so batched rows decode exactly as they would alone."""

    def __init__(self, gen: Generator, batch: int, capacity: int):
        self.gen, self.capacity = gen, capacity
        io = gen.dir.io["fast"]
        self.binding = gen.session.io_binding()
        for s in io["state"]:
            buf = ort.OrtValue.ortvalue_from_numpy(np.zeros((batch, gen.n_head, capacity, gen.head_dim), np.float32))
            self.binding.bind_ortvalue_input(s["input"], buf)
            self.binding.bind_ortvalue_output(s["output"], buf)
        self.lengths = np.zeros(batch, np.int64)
        self.ids, self.pos = np.zeros((batch, 1), np.int64), np.zeros((batch, 1), np.int64)
        self.seqlens, self.total = np.zeros(batch, np.int32), np.zeros((), np.int32)
        self.logits = np.zeros((batch, 1, gen.vocab_size), np.float32)
        self.values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in
                       (("input_ids", self.ids), ("position_ids", self.pos), ("seqlens_k", self.seqlens),
                        ("total_sequence_length", self.total), ("logits", self.logits))}
        self.logits_name = io["logits"]

    def _bind(self, values: dict) -> None:
        for name, v in values.items():
            if name == "logits":
                self.binding.bind_ortvalue_output(self.logits_name, v)
            else:
                self.binding.bind_ortvalue_input(name, v)

    def prefill(self, rows: list[list[int]]):
        """Run whole rows from an empty cache; returns (last real logits [B,V], None, None)."""
        B, width = len(rows), max(len(r) for r in rows)
        ids, pos = np.zeros((B, width), np.int64), np.zeros((B, width), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)], pos[i, :len(r)] = r, np.arange(len(r))
        self.lengths[:] = [len(r) for r in rows]
        logits = np.zeros((B, width, self.gen.vocab_size), np.float32)
        self._bind({"input_ids": ort.OrtValue.ortvalue_from_numpy(ids), "position_ids": ort.OrtValue.ortvalue_from_numpy(pos),
                    "seqlens_k": ort.OrtValue.ortvalue_from_numpy((self.lengths - 1).astype(np.int32)),
                    "total_sequence_length": ort.OrtValue.ortvalue_from_numpy(np.array(width, np.int32)),
                    "logits": ort.OrtValue.ortvalue_from_numpy(logits)})
        self.gen.session.run_with_iobinding(self.binding)
        self._bind(self.values)  # back to the step buffers
        return logits[np.arange(B), self.lengths - 1], None, None

    def step(self, next_ids: np.ndarray) -> np.ndarray:
        """Append one token per row; returns the logits [B,V] (a view reused by the next step)."""
        self.ids[:, 0] = next_ids
        self.pos[:, 0] = self.lengths
        self.seqlens[:] = self.lengths
        self.total[...] = self.lengths.max() + 1
        self.gen.session.run_with_iobinding(self.binding)
        self.lengths += 1
        return self.logits[:, 0]
