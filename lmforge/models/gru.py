"""A character-level GRU language model: embedding -> multi-layer GRU -> linear head, teacher-forced on every
position. forward(ids, state) -> (logits, state) where the state is (h,), h [n_layer, B, n_hidden]."""
from __future__ import annotations

import torch
import torch.nn as nn

from lmforge.models.lstm import RNNConfig


class GRU(nn.Module):
    family = "gru"
    state_names = ("h",)

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = nn.GRU(cfg.n_embd, cfg.n_hidden, cfg.n_layer, batch_first=True,
                          dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.head = nn.Linear(cfg.n_hidden, cfg.vocab_size)

    def forward(self, ids: torch.Tensor, state: tuple[torch.Tensor] | None = None,
                position_ids=None, attention_mask=None) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
        """ids [B,T]; state (h,) [n_layer,B,n_hidden] or None for zeros; position_ids/attention_mask ignored."""
        out, h = self.rnn(self.drop(self.embed(ids)), state[0] if state else None)
        return self.head(self.drop(out)), (h,)
