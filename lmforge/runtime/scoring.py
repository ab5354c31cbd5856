"""Scoring an exported model directory with onnxruntime and numpy alone: bits per byte of raw text in the model's own
tokenization (text_score: comparable across tokenizers, what promotion compares), the mean next-token loss over evenly
spaced windows of a token array (the val loss promotion shows beside it, and how each exported variant's cost is
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


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Next-token loss in nats of each target: logits [..., V] (float64 for the sums), targets of the same
    leading shape; -log softmax(logits)[target], through a max-shifted logsumexp."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    logsumexp = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
    return logsumexp - np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]


def greedy_ids(gen: Generator, ids: list[int], n: int) -> list[int]:
    """The n greedy token ids after `ids` through the generator's own decoding state (what generate() runs at
    temperature 0, EOS and the context limit left out), as ids rather than text."""
    dec = gen.decoder(1, len(ids) + n)
    logits, out = dec.prefill([ids]), []
    for _ in range(n):
        out.append(int(logits[0].argmax()))
        logits = dec.step(np.array(out[-1:]))
    return out


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
    from lmforge.core.errors import LmforgeError

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
        logits = gen.session.run([gen.dir.io["logits"]], prefill_feeds(gen, x))[0]
        total += float(token_nll(logits, y).sum())
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


def stepped_logits(gen: Generator, prompts: list[list[int]], forced: np.ndarray) -> np.ndarray:
    """Next-token logits [B, S+1, V] through the generator's own decoding state (Generator.decoder: on the fast
    graph the one in-place KV buffer bound as past and present, on the CUDA EP on the GPU; the mode generate()
    runs): after each prompt's prefill, then after each of forced[:, j] fed as one cached step."""
    forced = np.asarray(forced, np.int64)
    B, S = forced.shape
    dec = gen.decoder(B, max(map(len, prompts)) + S)
    out = [np.array(dec.prefill(prompts), np.float32)]
    for j in range(S):
        if dec.full():
            raise ValueError(f"{max(map(len, prompts))} prompt + {S} steps do not fit the context {gen.block_size}")
        out.append(np.array(dec.step(forced[:, j]), np.float32))  # a copy: the step's logits are reused
    return np.stack(out, 1)


def val_rows(val: np.ndarray, block_size: int, positions: int = 256, prompt: int = 8,
             max_len: int = 128) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """(prompts, forced [R, S], targets [R, S+1]) from evenly spaced windows of real tokens `val`: each row
    prefills `prompt` tokens, then is fed the next S one cached step at a time (prompt + S <= the context),
    and targets are the tokens each of the S+1 logits predicts; R rows give at least `positions` targets."""
    length = min(block_size, max_len)  # tokens fed per row
    prompt = max(1, min(prompt, length // 2))
    S = length - prompt
    starts = windows(len(val), length, -(-positions // (S + 1)))
    if not len(starts):
        raise ValueError(f"{len(val)} val tokens are fewer than one window of {length + 1}")
    rows = np.stack([np.asarray(val[s:s + length + 1], np.int64) for s in starts])
    return [list(r[:prompt]) for r in rows], rows[:, prompt:-1], rows[:, prompt:]


def stepped_score(gen: Generator, rows: tuple, positions: int | None = None) -> tuple[float, np.ndarray]:
    """(mean next-token loss in nats, top-1 ids) of `gen` over val_rows `rows`, run through stepped_logits;
    the first `positions` targets (row-major) count, all when None."""
    prompts, forced, targets = rows
    logits = stepped_logits(gen, prompts, forced).astype(np.float64).reshape(-1, gen.vocab_size)[:positions]
    y = targets.reshape(-1)[:positions]
    return float(token_nll(logits, y).mean()), logits.argmax(-1)


LN2 = float(np.log(2.0))


def sample_documents(documents: list[str], max_bytes: int) -> list[str]:
    """Up to max_bytes of UTF-8 text from `documents`, deterministically: every k-th document (evenly spaced
    over all of them, k from their total size), whole, until the budget; one long text is cut to the budget.
    Every model scored on the same documents and budget gets the same text."""
    sizes = [len(d.encode("utf-8", "surrogatepass")) for d in documents]
    total = sum(sizes)
    if total <= max_bytes:
        return list(documents)
    if len(documents) == 1:
        return [documents[0].encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore")]
    stride = max(1, -(-total // max_bytes))
    out, used = [], 0
    for i in range(0, len(documents), stride):
        if used + sizes[i] > max_bytes and out:
            break
        out.append(documents[i] if sizes[i] <= max_bytes else
                   documents[i].encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore"))
        used += min(sizes[i], max_bytes)
    return out


def text_score(model_dir: str | Path, documents: list[str], batch_size: int = 8) -> dict:
    """The model's cost of `documents` (raw text) in its own tokenization: each document encoded by the model's
    tokenizer and framed <bos> ... <eos> as training frames it, the documents as one stream cut into
    non-overlapping windows of the model's context, every token after the first predicted once from the tokens
    before it in its window. Returns bits per byte and per character of the text (the tokenizer-independent
    score promotion compares), nats per token, the counts, and the unigram model of the same tokens in bits per
    byte (what a first champion must beat). Unknown tokens are counted: a tokenizer that maps unseen characters
    to <unk> pays only for <unk>."""
    from lmforge.core.errors import LmforgeError

    gen = Generator(model_dir, device="cpu", fast=False)
    T = int(gen.dir.model["block_size"])
    frame_ids = [i for i in (gen.bos,) if i is not None], [i for i in (gen.eos,) if i is not None]
    stream = []
    for doc in documents:
        stream += frame_ids[0] + gen.tokenizer.encode(doc, add_special_tokens=False).ids + frame_ids[1]
    n_bytes = sum(len(d.encode("utf-8", "surrogatepass")) for d in documents)
    n_chars = sum(len(d) for d in documents)
    if len(stream) < 2 or not n_bytes:
        raise LmforgeError("the val text to score is empty", hint="prepare data with more val text")
    ids = np.asarray(stream, np.int64)
    starts = np.arange(0, len(ids) - 1, T)
    nll = np.zeros(len(ids) - 1)  # nll[j]: the cost of token j + 1
    full = [s for s in starts if s + T + 1 <= len(ids)]
    for i in range(0, len(full), batch_size):
        xy = np.stack([ids[s:s + T + 1] for s in full[i:i + batch_size]])
        logits = gen.session.run([gen.dir.io["logits"]], prefill_feeds(gen, xy[:, :-1]))[0]
        for row, s in enumerate(full[i:i + batch_size]):
            nll[s:s + T] = token_nll(logits[row], xy[row, 1:])
    for s in (s for s in starts if s + T + 1 > len(ids)):  # the last, shorter window
        xy = ids[s:][None]
        logits = gen.session.run([gen.dir.io["logits"]], prefill_feeds(gen, xy[:, :-1]))[0]
        nll[s:] = token_nll(logits[0], xy[0, 1:])
    targets = ids[1:]
    counts = np.bincount(targets)
    p = counts[targets] / targets.size
    bits = float(nll.sum()) / LN2
    return {"bits_per_byte": bits / n_bytes, "bits_per_char": bits / n_chars, "nats_per_token": float(nll.mean()),
            "unigram_bits_per_byte": float(-np.log2(p).sum()) / n_bytes, "tokens": int(targets.size),
            "bytes": n_bytes, "chars": n_chars, "documents": len(documents), "context": T,
            "unk_tokens": int((targets == gen.unk).sum()) if gen.unk is not None else 0}
