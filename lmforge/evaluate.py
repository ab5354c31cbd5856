"""Evaluation: loss, perplexity, bits per character and next-token accuracy on a token shard, samples at
several temperatures, and the loss-curve plot."""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def windows(data: np.ndarray, block_size: int, max_windows: int) -> np.ndarray:
    """Start offsets of up to max_windows evenly spaced windows (deterministic, so runs compare)."""
    last = len(data) - block_size - 1
    if last < 0:
        return np.zeros(0, dtype=np.int64)
    n = min(max_windows, last // block_size + 1)
    return np.linspace(0, last, n).astype(np.int64)


@torch.no_grad()
def evaluate_tokens(model: torch.nn.Module, data: np.ndarray, block_size: int, batch_size: int,
                    max_windows: int, device: str = "cpu", autocast=None) -> dict[str, float]:
    """Mean next-token loss and accuracy over evenly spaced windows of `data`."""
    starts = windows(data, block_size, max_windows)
    if not len(starts):
        return {"loss": float("nan"), "perplexity": float("nan"), "accuracy": float("nan"), "tokens": 0}
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        xy = torch.from_numpy(np.stack([data[s:s + block_size + 1].astype(np.int64) for s in chunk])).to(device)
        x, y = xy[:, :-1], xy[:, 1:]
        with autocast or nullcontext():
            logits, _ = model(x)
        logits = logits.float()
        total_loss += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    model.train(was_training)
    loss = total_loss / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / count, "tokens": count}


@torch.no_grad()
def sample_text(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, block_size: int,
                temperature: float = 1.0, top_k: int = 0, seed: int = 0, eos: int | None = None) -> list[int]:
    """Sample a continuation with the torch model during training (any family: the last `block_size` tokens are
    re-read each step, no cache). Uses its own numpy generator, so the training RNG streams are untouched."""
    from lmforge.runtime.sampling import SamplingParams, sample_next

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    params, rng, ids = SamplingParams(temperature=temperature, top_k=top_k), np.random.default_rng(seed), []
    for _ in range(max_new_tokens):
        x = torch.tensor([(prompt_ids + ids)[-block_size:]], device=device)
        logits, _ = model(x)
        tok = int(sample_next(logits[:, -1].float().cpu().numpy(), params, rng)[0])
        if tok == eos:
            break
        ids.append(tok)
    model.train(was_training)
    return ids


def bits_per_char(loss_nats_per_token: float, tokens: int, chars: int) -> float:
    return loss_nats_per_token * tokens / max(chars, 1) / math.log(2)


def plot_losses(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["train_loss"] for h in history], label="train")
    ax.plot(steps, [h["val_loss"] for h in history], label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
