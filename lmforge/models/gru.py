"""A character-level GRU language model with a loss at every position (teacher forcing, not only the last): the shared
recurrent model of lstm.py with a GRU cell, state (h,), h [n_layer, B, n_hidden]."""
from __future__ import annotations

import torch.nn as nn

from lmforge.models.lstm import RecurrentLM


class GRU(RecurrentLM):
    family = "gru"
    state_names = ("h",)
    cell = nn.GRU
