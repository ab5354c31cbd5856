"""Muon for the hidden matrices, AdamW for the rest, in one optimizer (train.optimizer = "muon").

Muon (Keller Jordan's, as torch.optim.Muon and modded-nanogpt run it) replaces each 2-D hidden weight's update by
the orthogonalised Nesterov momentum of its gradient: five quintic Newton-Schulz iterations push every singular
value of the momentum towards 1, so every direction of the matrix moves at the same rate. Embeddings, the head
(tied to the token embedding here), norms and biases keep AdamW, as in Muon's own recipe.

Why not torch.optim.Muon itself: it runs the iterations in bfloat16, which a CPU without AVX512-BF16/AMX emulates
(~3x a training step's cost on the 2-core machine of docs/quality.md), and one matrix at a time. Here the
iterations run in float32 and on every matrix of one shape at once (torch.bmm over a stack: 4 layers x 4 kinds of
matrix are 3 stacks after transposing the tall ones), which keeps the added cost to a share of the step's.

One Optimizer, so what handles optimizers keeps working unchanged: GradScaler (its param_groups hold every
parameter), state_dict/load_state_dict (checkpoints, resume), the training loop's per-group lr (a Muon group
carries `lr_scale`: its lr is the schedule's times that)."""
from __future__ import annotations

import torch
from torch.optim.adamw import adamw

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic's (a, b, c): Muon's, torch.optim.Muon's defaults


def orthogonalise(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz on a stack g [n, rows, cols] with rows <= cols: ~U V^T of each matrix's SVD, in float32."""
    a, b, c = NS_COEFFICIENTS
    x = g / (g.flatten(1).norm(dim=1).clamp(min=eps)[:, None, None])  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = torch.bmm(x, x.transpose(1, 2))  # [n, rows, rows]
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b*A + c*A@A
        x = torch.baddbmm(x, update, x, beta=a)  # a*X + (b*A + c*A@A) @ X
    return x


def hidden_matrices(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(Muon's parameters, AdamW's): the 2-D weights inside the blocks, and everything else (embeddings, the
    head, norms, biases)."""
    muon, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (muon if p.dim() == 2 and name.startswith("blocks.") else rest).append(p)
    return muon, rest


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the groups with `muon=True`, AdamW (decoupled weight decay) on the others. A Muon step of a
    [rows, cols] matrix: momentum m = mu*m + g; the update is orthogonalise(g + mu*m) (Nesterov), scaled by
    0.2 * sqrt(max(rows, cols)) so its RMS matches an AdamW update's (torch.optim.Muon's "match_rms_adamw"), and
    applied with the group's lr and decoupled weight decay."""

    def __init__(self, groups: list[dict], *, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8,
                 momentum: float = 0.95, ns_steps: int = 5):
        defaults = {"lr": 1e-3, "weight_decay": 0.0, "muon": False, "lr_scale": 1.0, "betas": betas, "eps": eps,
                    "momentum": momentum, "ns_steps": ns_steps}
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon if group["muon"] else self._adamw)(group, params)
        return loss

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        mu, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
        by_shape: dict[tuple[int, int], list[torch.Tensor]] = {}
        for p in params:
            rows, cols = p.shape
            by_shape.setdefault((min(rows, cols), max(rows, cols)), []).append(p)
        for (rows, cols), same in by_shape.items():
            bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in same]
            grads = [p.grad for p in same]
            torch._foreach_mul_(bufs, mu)
            torch._foreach_add_(bufs, grads)
            nesterov = torch._foreach_add(grads, bufs, alpha=mu)  # g + mu * m
            stack = torch.stack([u if u.shape[0] <= u.shape[1] else u.T for u in nesterov])  # [n, rows, cols]
            ortho = orthogonalise(stack, group["ns_steps"])
            scale = 0.2 * cols ** 0.5
            torch._foreach_mul_(same, 1.0 - lr * wd)
            for p, o in zip(same, ortho):
                p.add_(o if p.shape[0] <= p.shape[1] else o.T, alpha=-lr * scale)

    def _adamw(self, group: dict, params: list[torch.Tensor]) -> None:
        """torch's own AdamW step (torch.optim.adamw.adamw, the function torch.optim.AdamW runs) on the group."""
        states = [self.state[p] for p in params]
        for p, s in zip(params, states):
            if not s:  # the state torch.optim.AdamW keeps, so a checkpoint reads the same
                s["step"], s["exp_avg"], s["exp_avg_sq"] = torch.tensor(0.0), torch.zeros_like(p), torch.zeros_like(p)
        b1, b2 = group["betas"]
        adamw(params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
              [s["step"] for s in states], foreach=True, amsgrad=False, beta1=b1, beta2=b2, lr=group["lr"],
              weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)


def make(model: torch.nn.Module, *, lr: float, muon_lr: float, weight_decay: float, beta2: float) -> MuonAdamW:
    """The optimizer train.optimizer = "muon" makes: Muon at `muon_lr` on the hidden matrices (their lr follows the
    schedule, scaled by muon_lr / lr), AdamW at `lr` on the rest (weight decay on 2-D tensors only)."""
    muon, rest = hidden_matrices(model)
    groups = [{"params": muon, "muon": True, "weight_decay": weight_decay, "lr_scale": muon_lr / lr},
              {"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    return MuonAdamW([g for g in groups if g["params"]], betas=(0.9, beta2))
