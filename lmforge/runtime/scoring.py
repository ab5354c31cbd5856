"""Scoring an exported model directory with onnxruntime and numpy alone: the mean next-token loss over evenly
spaced windows of a token array (how promotion compares versions, and how each exported variant's cost is
measured beside fp32), and the feeds that run whole windows from an empty state."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lmforge.runtime.generator import Generator
from lmforge.runtime.modeldir import read_model_dir, write_manifest


def windows(n_tokens: int, block_size: int, max_windows: int) -> np.ndarray:
    """Start offsets of up to max_windows evenly spaced windows of block_size + 1 tokens (deterministic, so
    every model scored on the same array sees the same windows)."""
    last = n_tokens - block_size - 1
    if last < 0:
        return np.zeros(0, dtype=np.int64)
    n = min(max_windows, last // block_size + 1)
    return np.linspace(0, last, n).astype(np.int64)


def prefill_feeds(gen: Generator, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The inputs that run whole windows `ids` [batch, seq] through the portable graph from an empty state,
    named as the graph names them."""
    B, T = ids.shape
    feeds = {"input_ids": ids.astype(np.int64), "position_ids": np.tile(np.arange(T, dtype=np.int64), (B, 1)),
             "attention_mask": np.ones((B, T), np.int64), **gen.empty_state(B)}
    wanted = {i.name for i in gen.session.get_inputs()}
    return {k: v for k, v in feeds.items() if k in wanted}


def val_loss(model_dir: str | Path, data: np.ndarray, block_size: int | None = None, max_windows: int = 128,
             variant: str = "fp32", batch_size: int = 8) -> float:
    """Mean next-token loss (nats) of the exported model over evenly spaced windows of `data`."""
    from lmforge.errors import LmforgeError

    gen = Generator(model_dir, variant=variant, device="cpu", fast=False)
    T = int(block_size or gen.dir.model["block_size"])
    starts = windows(len(data), T, max_windows)
    if not len(starts):
        raise LmforgeError(f"the val shard has {len(data)} tokens, fewer than one window of {T + 1}",
                           hint="prepare more data or lower model.block_size")
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        xy = np.stack([data[s:s + T + 1].astype(np.int64) for s in starts[i:i + batch_size]])
        x, y = xy[:, :-1], xy[:, 1:]
        logits = gen.session.run([gen.dir.io["logits"]], prefill_feeds(gen, x))[0].astype(np.float64)
        top = logits.max(-1, keepdims=True)
        logsumexp = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
        total += float((logsumexp - np.take_along_axis(logits, y[..., None], -1)[..., 0]).sum())
        count += y.size
    return total / count


def unigram_entropy(data: np.ndarray, block_size: int, max_windows: int = 128) -> float:
    """The loss (nats/token) of the best context-free model of the very windows val_loss scores: the entropy of
    their target tokens' frequencies. A model that does not beat it has learnt nothing beyond token counts."""
    starts = windows(len(data), block_size, max_windows)
    targets = np.concatenate([np.asarray(data[s + 1:s + block_size + 1], np.int64) for s in starts])
    p = np.bincount(targets) / targets.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


DELTA_VARIANTS = ("int8", "fp16", "optimized")  # portable graphs val_loss can score beside fp32


def variant_val_loss_deltas(model_dir: Path, val: np.ndarray, max_windows: int = 32) -> dict[str, float]:
    """fp32's val loss and each exported variant's val loss minus it, all through onnxruntime on the same
    windows of `val`; also written into the directory's lmforge.json `metrics`. {} when there is no variant."""
    md = read_model_dir(model_dir)
    variants = [v for v in DELTA_VARIANTS if v in md.variants()]
    if not variants:
        return {}
    fp32 = val_loss(model_dir, val, max_windows=max_windows)
    scores = {"onnx_fp32_val_loss": fp32,
              **{f"{v}_val_loss_delta": val_loss(model_dir, val, max_windows=max_windows, variant=v) - fp32
                 for v in variants}}
    write_manifest(model_dir, {**md.manifest, "metrics": {**md.manifest.get("metrics", {}), **scores}})
    return scores
