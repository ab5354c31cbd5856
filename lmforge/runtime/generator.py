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

from lmforge.runtime.modeldir import read_model_dir
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

    def __init__(self, model_dir: str | Path, variant: str = "fp32", device: str = "auto", threads: int | None = None):
        self.dir = read_model_dir(model_dir)
        self.session, self.provider = create_session(str(self.dir.onnx_path(variant)), device, threads)
        self.variant = variant
        self.tokenizer = Tokenizer.from_file(str(self.dir.tokenizer_path))
        spec = self.dir.model
        self.block_size = int(spec["block_size"])
        self.vocab_size = int(spec["vocab_size"])
        if self.tokenizer.get_vocab_size() > self.vocab_size:
            raise ValueError(f"tokenizer has {self.tokenizer.get_vocab_size()} tokens but the model only "
                             f"{self.vocab_size}: the tokenizer does not belong to this model")
        self.state_io = self.dir.io["state"]
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

    def _empty_state(self, batch: int) -> dict[str, np.ndarray]:
        return {s["input"]: np.zeros((batch, self.n_head, 0, self.head_dim), np.float32) for s in self.state_io}

    def _forward(self, ids: np.ndarray, mask: np.ndarray, state: dict[str, np.ndarray]):
        pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, -ids.shape[1]:]
        feeds = {"input_ids": ids, "position_ids": pos.astype(np.int64), "attention_mask": mask, **state}
        out = self.session.run(self.output_names, feeds)
        return out[0][:, -1, :], {s["input"]: o for s, o in zip(self.state_io, out[1:])}

    def _prefill(self, rows: list[list[int]]):
        """Left-pad rows to one length and run them; positions count real tokens only."""
        width = max(len(r) for r in rows)
        pad = self.pad if self.pad is not None else 0
        ids = np.full((len(rows), width), pad, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = r
            mask[i, width - len(r):] = 1
        logits, state = self._forward(ids, mask, self._empty_state(len(rows)))
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
        logits, state, mask = self._prefill(tokens)
        generated: list[list[int]] = [[] for _ in range(B)]
        emitted = [""] * B
        done = np.zeros(B, bool)
        for _ in range(req.max_new_tokens):
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
                if not done[i] and text.endswith("\ufffd"):
                    continue  # wait for the rest of a multi-byte character
                if len(text) > len(emitted[i]) and text.startswith(emitted[i]):
                    yield i, text[len(emitted[i]):]
                    emitted[i] = text
            if done.all():
                return
            if mask.shape[1] + 1 > self.block_size:  # slide: re-prefill the last `window` tokens of every row
                logits, state, mask = self._prefill([t[-window:] for t in tokens])
                continue
            step_ids = np.where(done, self.pad or 0, nxt).astype(np.int64)[:, None]
            mask = np.concatenate([mask, np.ones((B, 1), np.int64)], axis=1)
            logits, state = self._forward(step_ids, mask, state)
