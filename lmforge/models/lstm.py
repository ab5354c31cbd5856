"""Recurrent language models: embedding -> multi-layer recurrent cell -> linear head, predicting the next token at
every position (teacher forcing over the whole window). forward(ids, state) -> (logits, state), the state a
tuple of [n_layer, B, n_hidden] tensors carried from one decoding step to the next. This module holds the word-level
LSTM (state (h, c)) and the shared base the character-level GRU (gru.py, state (h,)) builds on."""
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


class RecurrentLM(nn.Module):
    family: str
    state_names: tuple[str, ...]
    cell: type[nn.RNNBase]

    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = self.cell(cfg.n_embd, cfg.n_hidden, cfg.n_layer, batch_first=True,
                             dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.head = nn.Linear(cfg.n_hidden, cfg.vocab_size)

    def forward(self, ids: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None,
                position_ids=None, attention_mask=None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """ids [B,T]; state: one [n_layer,B,n_hidden] tensor per state name, or None for zeros. position_ids and
        attention_mask are accepted for the common interface and ignored: a recurrent state has no positions."""
        packed = (tuple(state) if len(self.state_names) > 1 else state[0]) if state else None
        out, new = self.rnn(self.drop(self.embed(ids)), packed)
        return self.head(self.drop(out)), tuple(new) if isinstance(new, tuple) else (new,)


class LSTM(RecurrentLM):
    family = "lstm"
    state_names = ("h", "c")
    cell = nn.LSTM
