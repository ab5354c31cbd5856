"""Model families. Each takes forward(ids, state=None) -> (logits, state)."""
from __future__ import annotations

import torch.nn as nn

from lmforge.core.config import ModelConfig
from lmforge.core.errors import LmforgeError


def build_model(cfg: ModelConfig, vocab_size: int, seed: int | None = None) -> nn.Module:
    """The model of `cfg` for a vocabulary; with `seed`, its initial weights are drawn from that seed (the same
    config always starts from the same weights, whatever the process did before)."""
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    if cfg.family == "gpt":
        from lmforge.models.gpt import GPT, GPTConfig

        return GPT(GPTConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                             n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias))
    if cfg.family in ("lstm", "gru"):
        from lmforge.models.gru import GRU
        from lmforge.models.lstm import LSTM, RNNConfig

        rnn = RNNConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer, n_embd=cfg.n_embd,
                        n_hidden=cfg.n_hidden, dropout=cfg.dropout)
        return LSTM(rnn) if cfg.family == "lstm" else GRU(rnn)
    if cfg.family == "hf-gpt2":
        from lmforge.models.hf_gpt2 import load_pretrained

        return load_pretrained(cfg.pretrained, vocab_size, cfg.block_size, cfg.dropout)
    raise LmforgeError(f"unknown model family {cfg.family!r}", hint="model.family is one of gpt, lstm, gru, hf-gpt2")


def model_spec(model: nn.Module) -> dict:
    """What the exported directory records about the architecture (lmforge.json `model`)."""
    c = model.cfg
    family = getattr(model, "family", "gpt")
    if family in ("lstm", "gru"):
        return {"family": family, "vocab_size": c.vocab_size, "n_layer": c.n_layer, "n_embd": c.n_embd,
                "n_hidden": c.n_hidden, "block_size": c.block_size, "state": list(model.state_names)}
    return {"family": family, "vocab_size": c.vocab_size, "n_layer": c.n_layer, "n_head": c.n_head,
            "n_embd": c.n_embd, "head_dim": c.n_embd // c.n_head, "block_size": c.block_size}
