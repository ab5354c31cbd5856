"""A word-level LSTM language model: embedding -> multi-layer LSTM -> linear head, predicting the next token at
every position (teacher forcing over the whole window). forward(ids, state) -> (logits, state) where the state
is (h, c), each [n_layer, B, n_hidden], so decoding carries it from one step to the next."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class RNNConfig:
    vocab_size: int
    block_size: int = 64     # training context; decoding has no limit
    n_layer: int = 2
    n_embd: int = 128        # embedding size
    n_hidden: int = 256
    dropout: float = 0.0


class LSTM(nn.Module):
    family = "lstm"
    state_names = ("h", "c")

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = nn.LSTM(cfg.n_embd, cfg.n_hidden, cfg.n_layer, batch_first=True,
                           dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.head = nn.Linear(cfg.n_hidden, cfg.vocab_size)

    def forward(self, ids: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None,
                position_ids=None, attention_mask=None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """ids [B,T]; state (h, c) [n_layer,B,n_hidden] or None for zeros. position_ids/attention_mask are
        accepted for a common interface and ignored: a recurrent state has no positions."""
        out, (h, c) = self.rnn(self.drop(self.embed(ids)), tuple(state) if state else None)
        return self.head(self.drop(out)), (h, c)
