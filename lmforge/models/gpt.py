"""A decoder-only transformer (GPT): token + position embeddings, pre-LayerNorm blocks with causal
scaled-dot-product attention, tied output head. forward(ids, state) -> (logits, state) where the state is
the per-layer key/value cache, so training, evaluation, sampling and ONNX export share one code path."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        drop = self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, past, mask):
        a, present = self.attn(self.ln_1(x), past, mask)
        x = x + a
        return x + self.mlp(self.ln_2(x)), present


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor, state: KVCache | None = None, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """ids [B,T]; state: per-layer (key, value) [B,H,P,D]; position_ids [B,T] (default P..P+T-1);
        attention_mask [B,P+T] with 1 for real tokens, 0 for padding (default all ones)."""
        B, T = ids.shape
        past_len = state[0][0].shape[2] if state else 0
        check_length(past_len, T, self.cfg.block_size)
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + T, device=ids.device).unsqueeze(0)
        x = self.drop(self.wte(ids) + self.wpe(position_ids))
        mask = None
        if state or attention_mask is not None:
            mask = causal_mask(T, past_len, attention_mask, ids.device)
        present: KVCache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, state[i] if state else None, mask)
            present.append(kv)
        return self.lm_head(self.ln_f(x)), present


def check_length(past_len: int, T: int, block_size: int) -> None:
    """Positions past the context have no position embedding: say so here, not deep inside an index error."""
    if past_len + T > block_size:
        raise ValueError(f"GPT.forward: {past_len} cached + {T} new positions exceed the model's context of "
                         f"{block_size} (model.block_size); pass at most the last {block_size - past_len} ids")


def causal_mask(T: int, past_len: int, attention_mask: torch.Tensor | None, device) -> torch.Tensor:
    """Boolean [B|1, 1, T, P+T]: query i (at absolute P+i) sees key j when j <= P+i and key j is not padding.
    Every query also sees itself, so padding rows stay finite instead of turning into NaN."""
    q = torch.arange(T, device=device).unsqueeze(1) + past_len
    k = torch.arange(past_len + T, device=device).unsqueeze(0)
    mask = (k <= q).unsqueeze(0).unsqueeze(0)
    if attention_mask is not None:
        mask = mask & (attention_mask.bool()[:, None, None, :] | (k == q))
    return mask
