"""Muon on hidden matrices, AdamW on the rest; the batched Muon step matches torch.optim.Muon."""

import pytest
import torch
from conftest import small_spec

from slm_blocks import build_model, load_preset
from slm_blocks.training.config import TrainConfig
from slm_blocks.training.optim import BatchedMuon, MuonAdamW, hidden_matrices, make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


def names(model, params):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("preset", ["tiny-char", "llama"])
def test_hidden_matrices_are_the_projections_only(preset):
    model = build_model(load_preset(preset))
    hidden, other, flat = hidden_matrices(model)
    h = names(model, hidden)
    assert h and all(n.split(".")[-2].endswith("_proj") and n.endswith(".weight") for n in h)
    assert "model.layers.0.self_attn.q_proj.weight" in h and "model.layers.0.self_attn.k_proj.weight" in h
    assert names(model, other) >= {"model.embed_tokens.weight"}  # the tied head is the embedding
    assert all(p.dim() < 2 for p in flat)
    assert len(hidden) + len(other) + len(flat) == len(list(model.parameters()))


def test_an_untied_head_stays_with_adamw():
    model = build_model(small_spec(tie=False))
    hidden, other, _ = hidden_matrices(model)
    assert "lm_head.weight" in names(model, other) and "lm_head.weight" not in names(model, hidden)


def test_the_batched_step_matches_torch_muon():
    torch.manual_seed(0)
    shapes = [(32, 32), (32, 32), (96, 32), (32, 96)]
    a = [torch.randn(s, requires_grad=True) for s in shapes]
    b = [p.detach().clone().requires_grad_() for p in a]
    ref = torch.optim.Muon(a, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    ours = BatchedMuon(b, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    start = [p.detach().clone() for p in a]
    for _ in range(3):
        for p, q in zip(a, b):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ref.step()
        ours.step()
    for p, q, s in zip(a, b, start):
        moved = float((p - s).detach().abs().max())
        assert moved > 1e-3  # it really stepped
        assert float((p - q).detach().abs().max()) < 0.02 * moved  # torch's runs in bf16, ours in fp32
        assert torch.allclose(ref.state[p]["momentum_buffer"], ours.state[q]["momentum_buffer"])


def test_one_learning_rate_reaches_both_halves():
    model = build_model(small_spec())
    opt = make_optimizer(model, TrainConfig(optimizer="muon", lr=0.05))
    assert isinstance(opt, MuonAdamW)
    assert {g["lr"] for g in opt.param_groups} == {0.05}
    for g in opt.param_groups:
        g["lr"] = 0.01  # what the loop does every step
    assert {g["lr"] for g in opt.muon.param_groups + opt.adamw.param_groups} == {0.01}
    assert isinstance(make_optimizer(model, TrainConfig(optimizer="adamw")), torch.optim.AdamW)
