"""Evaluation: loss, perplexity, bits per character and next-token accuracy on a token shard, samples at
several temperatures, and the loss-curve plot."""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.runtime.scoring import windows
from lmforge.data.shards import open_shard


@torch.no_grad()
def evaluate_tokens(model: torch.nn.Module, data: np.ndarray, block_size: int, batch_size: int,
                    max_windows: int, *, device: str = "cpu", autocast=None) -> dict[str, float]:
    """Mean next-token loss and accuracy over evenly spaced windows of `data`."""
    starts = windows(len(data), block_size, max_windows)
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
def sample_text(model: torch.nn.Module, prompt_ids: list[int], max_new_tokens: int, block_size: int, *,
                temperature: float = 1.0, top_k: int = 0, seed: int = 0, eos: int | None = None) -> list[int]:
    """Sample a continuation with the torch model during training (any family: the last `block_size` tokens are
    re-read each step, no cache), at least one token before <eos>. Uses its own numpy generator, so the training
    RNG streams are untouched."""
    from lmforge.runtime.sampling import SamplingParams, sample_next

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    params, rng, ids = SamplingParams(temperature=temperature, top_k=top_k), np.random.default_rng(seed), []
    for _ in range(max_new_tokens):
        x = torch.tensor([(prompt_ids + ids)[-block_size:]], device=device)
        logits, _ = model(x)
        last = logits[:, -1].float().cpu().numpy()
        if not ids and eos is not None:
            last[:, eos] = -np.inf  # a sample says something: <eos> may end it, not be all of it
        tok = int(sample_next(last, params, rng)[0])
        if tok == eos:
            break
        ids.append(tok)
    model.train(was_training)
    return ids


def eval_sampler(cfg, data, emit: Callable[[int, str], None]) -> Callable[[torch.nn.Module, int], None]:
    """A training hook: at every evaluation, a continuation of the first eval prompt (top-k, T=1, at most 60
    tokens), decoded and handed to emit(step, text): a person watching a run sees what the model writes now,
    not only a loss."""
    from lmforge.data.tokenize import load_tokenizer

    tok = load_tokenizer(data.tokenizer_file)
    ids = data.special_ids
    prompt = cfg.eval.prompts[0] if cfg.eval.prompts else ""
    prompt_ids = ([ids["bos"]] if ids["bos"] is not None else []) + tok.encode(prompt, add_special_tokens=False).ids

    def sample(model: torch.nn.Module, step: int) -> None:
        out = sample_text(model, prompt_ids, min(cfg.eval.max_new_tokens, 60), cfg.model.block_size,
                          temperature=1.0, top_k=cfg.eval.top_k, seed=step, eos=ids["eos"])
        emit(step, prompt + tok.decode(out))

    return sample


def exported_samples(cfg, model_dir: Path) -> list[dict]:
    """Text generated through the exported directory (onnxruntime, as apps run it) for every eval prompt,
    temperature and seed: {"prompt", "temperature", "seed", "text" (prompt included)}."""
    from lmforge.runtime import Generator

    gen = Generator(model_dir)
    samples = []
    for prompt in cfg.eval.prompts:
        for t in cfg.eval.temperatures:
            for i in range(cfg.eval.num_samples):
                text = gen.generate(prompt, max_new_tokens=cfg.eval.max_new_tokens, temperature=t,
                                    top_k=cfg.eval.top_k, seed=i)
                samples.append({"prompt": prompt, "temperature": t, "seed": i, "text": prompt + text})
    return samples


def bits_per_char(loss_nats_per_token: float, tokens: int, chars: int) -> float:
    return loss_nats_per_token * tokens / max(chars, 1) / math.log(2)


def evaluate_best(cfg, data, ckpt_dir: Path, max_windows: int = 2000) -> dict[str, float]:
    """The run's best checkpoint scored on its whole val split (up to max_windows evenly spaced windows)."""
    from lmforge.training.checkpoint import load_best

    model = load_best(cfg.model, data.vocab_size, ckpt_dir)
    res = evaluate_tokens(model, open_shard(data.dir, "val"), cfg.model.block_size, cfg.train.batch_size, max_windows)
    return split_metrics(res, cfg.tokenizer.kind, data.val_tokens, data.val_chars)


def split_metrics(result: dict, tokenizer_kind: str, val_tokens: int, val_chars: int) -> dict[str, float]:
    """The metrics logged for a model's val split: loss, perplexity, accuracy, and bits per character (for a char
    tokenizer the loss itself in bits; otherwise converted with the split's tokens-per-character ratio)."""
    metrics = {"val_loss": result["loss"], "val_perplexity": result["perplexity"], "val_accuracy": result["accuracy"]}
    if tokenizer_kind == "char":
        metrics["val_bpc"] = result["loss"] / math.log(2)
    elif val_chars:
        metrics["val_bpc"] = bits_per_char(result["loss"], val_tokens, val_chars)
    return metrics


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
