"""Choose next tokens from a batch of logits with numpy: greedy, temperature, top-k, top-p, repetition penalty."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np

from lmforge.runtime.errors import RequestError


def _check(name: str, value: object, ok: bool, valid: str, hint: str) -> None:
    if not ok:
        raise RequestError(f"{name} must be {valid}, got {value!r}", hint=hint)


def _is_finite(value: object) -> bool:
    """Finite once cast to float32, the dtype the logits are scaled in (3.5e38 would become inf there)."""
    return (isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
            and abs(value) <= float(np.finfo(np.float32).max))


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 => greedy (argmax)
    top_k: int = 0  # 0 => off
    top_p: float = 1.0  # 1.0 => off; nucleus sampling
    repetition_penalty: float = 1.0  # 1.0 => off; CTRL-style, applied to ids marked in `seen`

    def __post_init__(self) -> None:
        t, k, p, r = self.temperature, self.top_k, self.top_p, self.repetition_penalty
        _check("temperature", t, _is_finite(t) and t >= 0, "a finite number >= 0 (0 = greedy)",
               "pass e.g. temperature 0.8 to sample, or 0 for greedy decoding")
        _check("top_k", k, isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 0,
               "an int >= 0 (0 = off)", "pass a whole number such as top_k 40, or 0 to sample from every token")
        _check("top_p", p, _is_finite(p) and 0 < p <= 1, "a number in (0, 1] (1 = off)",
               "pass e.g. top_p 0.9, or 1 to turn nucleus sampling off")
        _check("repetition_penalty", r, _is_finite(r) and np.float32(r) > 0,  # > 0 still in float32
               "a finite number > 0 (1 = off)", "pass e.g. repetition_penalty 1.1, or 1 to turn it off")


def sample_next(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator | Sequence[np.random.Generator],
                seen: np.ndarray | None = None) -> np.ndarray:
    """Return one token id per row of `logits` [batch, vocab] as int64 [batch].

    `rng` is one generator for the whole batch, or one per row (row i then draws only from rng[i], so a row gets
    the same tokens in any batch as alone). `seen` is an optional bool mask [batch, vocab] of ids already in the
    context; the caller updates it in place. Rows must have at least one finite logit. Greedy (temperature 0)
    draws nothing; otherwise one uniform per row, so the same seed gives the same tokens. Every step is row by
    row: a row's token never depends on the other rows of the batch.
    """
    x = np.asarray(logits, dtype=np.float32)
    if x.ndim != 2:
        raise RequestError(f"logits must be 2-D [batch, vocab], got shape {x.shape}",
                           hint="pass the last position's logits only, e.g. logits[:, -1, :] of a [batch, seq, vocab] "
                                "output")
    if seen is not None and params.repetition_penalty != 1.0:
        seen, r = np.asarray(seen, dtype=bool), np.float32(params.repetition_penalty)
        if seen.shape != x.shape:
            raise RequestError(f"seen must have the logits' shape {x.shape}, got {seen.shape}",
                               hint="pass seen as a bool mask [batch, vocab] of the ids already in each row, or None")
        x = x.copy()  # the caller's logits are never modified
        hit = x[seen]  # masked indexing: ~7x faster than np.where over the full vocab
        x[seen] = np.where(hit > 0, hit / r, hit * r)
    if params.temperature == 0:
        return np.argmax(x, axis=-1).astype(np.int64)

    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        scaled = x / np.float32(params.temperature)
    # a temperature or penalty extreme enough to overflow float32: that row is greedy at float32's limit
    bad = np.isnan(scaled).any(axis=-1) | np.isposinf(scaled).any(axis=-1)
    out = np.empty(len(x), np.int64)
    if bad.any():
        out[bad] = np.argmax(np.nan_to_num(x[bad], nan=-np.inf), axis=-1)
        if bad.all():
            return out
        scaled = scaled[~bad]
    good = np.flatnonzero(~bad)
    if isinstance(rng, np.random.Generator):
        uniforms = rng.random(len(good))
    else:
        uniforms = np.array([rng[i].random() for i in good])
    out[good] = _sample_scaled(scaled, params, uniforms)
    return out


def sample_rows(logits: np.ndarray, params: Sequence[SamplingParams], rngs: Sequence[np.random.Generator],
                seen: np.ndarray | None = None) -> np.ndarray:
    """One token id per row of `logits` [batch, vocab], where each row has its own parameters and generator: rows
    that share parameters are sampled in one sample_next call, each drawing from its own generator."""
    groups: dict[SamplingParams, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(p, []).append(i)
    if len(groups) == 1:
        return sample_next(logits, params[0], rngs, seen)
    out = np.empty(len(params), np.int64)
    for p, rows in groups.items():
        out[rows] = sample_next(logits[rows], p, [rngs[i] for i in rows], None if seen is None else seen[rows])
    return out


def _sample_scaled(x: np.ndarray, params: SamplingParams, uniforms: np.ndarray) -> np.ndarray:
    """Top-k, then top-p, then a draw, over temperature-scaled logits x [batch, vocab]."""
    vocab = x.shape[-1]
    ids = None  # candidate column -> token id, once candidates are a subset
    if 0 < params.top_k < vocab:
        ids = np.argpartition(x, vocab - params.top_k, axis=-1)[:, vocab - params.top_k:]
        x = np.take_along_axis(x, ids, axis=-1)
    probs = np.exp(x - x.max(axis=-1, keepdims=True))  # unnormalised softmax; -inf -> 0
    if params.top_p < 1.0:  # keep the shortest prefix, by descending prob, whose mass reaches top_p
        mass = params.top_p * probs.sum(axis=-1, dtype=np.float64, keepdims=True)
        choice = np.empty(len(x), np.int64)
        for rows, order in _descending_heads(probs, mass):
            p = np.take_along_axis(probs[rows], order, axis=-1)
            p = np.where(np.cumsum(p, axis=-1, dtype=np.float64) - p < mass[rows], p, 0)
            choice[rows] = np.take_along_axis(order, _inverse_cdf(p, uniforms[rows])[:, None], axis=-1)[:, 0]
    else:
        choice = _inverse_cdf(probs, uniforms)
    if ids is not None:
        choice = np.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]
    return choice.astype(np.int64)


def _descending_heads(probs: np.ndarray, mass: np.ndarray):
    """(rows, columns [len(rows), k]): for each row, its k largest probs' columns, largest first, for the
    smallest k of 64, 1024, 16384 or the whole row whose sum reaches `mass` [batch, 1] (argpartition, so top-p
    sorts a short head rather than the vocab). Each row's k depends on that row alone."""
    n = probs.shape[-1]
    rows = np.arange(len(probs))
    for k in (64, 1024, 16384):
        if k >= n or not rows.size:
            break
        p = probs[rows]
        top = np.argpartition(p, n - k, axis=-1)[:, n - k:]
        ok = np.take_along_axis(p, top, axis=-1).sum(axis=-1, dtype=np.float64) >= mass[rows, 0]
        if ok.any():
            head = top[ok]
            yield rows[ok], np.take_along_axis(head, np.argsort(-np.take_along_axis(p[ok], head, axis=-1), axis=-1),
                                               axis=-1)
        rows = rows[~ok]
    if rows.size:
        yield rows, np.argsort(-probs[rows], axis=-1)


def _inverse_cdf(probs: np.ndarray, uniforms: np.ndarray, block: int = 256) -> np.ndarray:
    """One column per row drawn with chance proportional to `probs` (>= 0, some > 0), given one uniform in [0, 1)
    per row.

    Two levels, since a cumsum over the whole vocab is slow: pick a block of columns by its
    cumulative mass, then a column inside it. Each level takes the first cumulative sum above
    the target, and capping the target just below the level's total stops rounding from landing
    on a zero-probability column.
    """
    batch, n = probs.shape
    blocks = np.zeros((batch, n + -n % block), dtype=probs.dtype)  # zero-padded to whole blocks
    blocks[:, :n] = probs
    blocks = blocks.reshape(batch, -1, block)
    cum = np.cumsum(blocks.sum(axis=-1, dtype=np.float64), axis=-1)
    total = cum[:, -1]
    target = np.minimum(uniforms * total, np.nextafter(total, 0))
    b = (cum <= target[:, None]).sum(axis=-1)
    rows = np.arange(batch)
    inner = np.cumsum(blocks[rows, b], axis=-1, dtype=np.float64)
    target = target - np.where(b > 0, cum[rows, b - 1], 0)
    target = np.minimum(target, np.nextafter(inner[:, -1], 0))
    return b * block + (inner <= target[:, None]).sum(axis=-1)
