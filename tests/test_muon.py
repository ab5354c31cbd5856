"""train.optimizer = "muon" (lmforge/training/muon.py): the orthogonalisation, the optimizer's state through a
checkpoint, a real train() run, and the config's one-line refusals."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lmforge.core.config import ModelConfig, TrainConfig, load_config
from lmforge.core.errors import LmforgeError
from lmforge.models import build_model
from lmforge.training.muon import MuonAdamW, hidden_matrices, orthogonalise
from lmforge.training.train import make_optimizer, train


def test_newton_schulz_brings_every_singular_value_near_one():
    g = torch.randn(3, 16, 48, generator=torch.Generator().manual_seed(0))
    g[0] *= torch.logspace(-2, 0, 16)[:, None]  # a badly conditioned matrix too: singular values over 2 decades
    before = torch.linalg.svdvals(g)
    after = torch.linalg.svdvals(orthogonalise(g))
    assert before[0].max() / before[0].min() > 50
    assert after.min() > 0.5 and after.max() < 1.5  # Muon's quintic: ~U V^T, singular values in (0.5, 1.5)


def test_the_blocks_matrices_get_muon_and_everything_else_adamw():
    model = build_model(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=16), 23)
    names = {id(p): n for n, p in model.named_parameters()}
    muon, rest = hidden_matrices(model)
    assert sorted(names[id(p)] for p in muon) == sorted(
        f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert {names[id(p)] for p in rest} >= {"wte.weight", "wpe.weight", "ln_f.weight"}
    opt = make_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02), "cpu")
    assert isinstance(opt, MuonAdamW)
    assert [g["lr_scale"] for g in opt.param_groups if g["muon"]] == [pytest.approx(20.0)]


def _step(model, opt, x):
    loss = model(x)[0].square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_a_restored_state_steps_exactly_as_the_original():
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), 23)
    opt = make_optimizer(model, TrainConfig(optimizer="muon"), "cpu")
    x = torch.randint(0, 23, (4, 16))
    for _ in range(3):
        _step(model, opt, x)
    twin = copy.deepcopy(model)
    restored = make_optimizer(twin, TrainConfig(optimizer="muon"), "cpu")
    restored.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(2):
        _step(model, opt, x)
        _step(twin, restored, x)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_train_with_muon_learns_the_pattern(tmp_path):
    rng = np.random.default_rng(0)
    data = (np.cumsum(rng.integers(1, 3, 6000)) % 23).astype(np.uint16)  # a learnable pattern
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), 23)
    cfg = TrainConfig(max_steps=60, batch_size=8, eval_interval=30, eval_iters=4, warmup_steps=5, device="cpu",
                      threads=1, optimizer="muon", lr=1e-2, muon_lr=0.02)
    result = train(model, data[:5000], data[5000:], 16, cfg, tmp_path / "ckpt")
    first, last = result.history[0]["val_loss"], result.history[-1]["val_loss"]
    assert last < first and last < 1.3, (first, last)  # uniform guessing: log(23) = 3.14; the pattern's best 0.69


def test_muon_is_for_the_gpt_family_and_a_known_optimizer():
    with pytest.raises(LmforgeError, match="train.optimizer=muon orthogonalises the gpt blocks"):
        load_config("tinystories-lstm", {"train.optimizer": "muon"})
    with pytest.raises(LmforgeError, match="train.optimizer"):
        load_config("shakespeare-char", {"train.optimizer": "sgd"})


def test_adamw_runs_keep_their_directories_and_muon_gets_its_own():
    from lmforge.core.layout import weights_hash

    adamw = load_config("shakespeare-char", {"train.optimizer": "adamw"})
    assert weights_hash(adamw) == weights_hash(load_config("shakespeare-char", {"train.optimizer": "adamw",
                                                                               "train.muon_lr": 0.05}))
    muon = load_config("shakespeare-char", {"train.optimizer": "muon"})
    assert weights_hash(muon) != weights_hash(adamw)
    assert weights_hash(muon) != weights_hash(load_config("shakespeare-char", {"train.optimizer": "muon",
                                                                              "train.muon_lr": 0.05}))
