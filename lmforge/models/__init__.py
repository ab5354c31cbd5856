"""Model families. Each takes forward(ids, state=None) -> (logits, state)."""
from __future__ import annotations

import torch.nn as nn

from lmforge.config import ModelConfig
from lmforge.errors import LmforgeError


def build_model(cfg: ModelConfig, vocab_size: int) -> nn.Module:
    if cfg.family == "gpt":
        from lmforge.models.gpt import GPT, GPTConfig

        return GPT(GPTConfig(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer,
                             n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias))
    raise LmforgeError(f"model family {cfg.family!r} is not available yet", hint="use model.family=gpt")


def model_spec(model: nn.Module) -> dict:
    """What the exported directory records about the architecture (lmforge.json `model`)."""
    c = model.cfg
    return {"family": "gpt", "vocab_size": c.vocab_size, "n_layer": c.n_layer, "n_head": c.n_head,
            "n_embd": c.n_embd, "head_dim": c.n_embd // c.n_head, "block_size": c.block_size}
