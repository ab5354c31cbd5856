"""A character-level GRU language model, teacher-forced on every position (seed 003 was not): the shared
recurrent model of lstm.py with a GRU cell, state (h,), h [n_layer, B, n_hidden]."""
from __future__ import annotations

import torch.nn as nn

from lmforge.models.lstm import RecurrentLM


class GRU(RecurrentLM):
    family = "gru"
    state_names = ("h",)
    cell = nn.GRU
