"""The optimizer: Muon on the hidden weight matrices with AdamW on the rest (the default), or AdamW alone.

Muon (torch.optim.Muon, the modded-nanogpt speedruns' optimizer) orthogonalizes each 2-D update with a few
Newton-Schulz steps, so every direction of a weight matrix learns at the same rate; measured on CPU it reaches a
given held-out loss in fewer steps than AdamW (README, "Time to quality"). It only suits hidden matrices:
embeddings, the (tied) output head, norms and biases stay with AdamW. q/k/v and gate/up are separate
Parameters here, so each is orthogonalized on its own (not as one fused matrix).

Muon uses `adjust_lr_fn="match_rms_adamw"` (its update has AdamW's RMS), so one learning rate and one
schedule drive both halves: the loop sets `group["lr"]` on every group alike.

`BatchedMuon` is torch.optim.Muon with its step done per shape: the Newton-Schulz iterations of every matrix
of one shape run as one batched matmul, in fp32. torch's step runs them one matrix at a time in bf16, which on
a 2-core CPU cost as much as the forward and backward of tiny-char (46 vs 44 ms) and is emulated (~1,000×
slower) on CPUs without bf16 units. Same state (`momentum_buffer`), same update up to rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim._muon import _adjust_lr


def _orthogonalize(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """Newton-Schulz on a batch of matrices (n, A, B), the quintic of torch.optim.Muon, in the input dtype."""
    a, b, c = coefficients
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g  # (n, small, large): the Gram matrix is the small one
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm ≤ 1
    for _ in range(steps):
        gram = x @ x.mT  # (n, small, small)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon, with every same-shape matrix orthogonalized in one batched fp32 call (see above)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                by_shape.setdefault(tuple(p.shape), []).append((p, update))
            for shape, items in by_shape.items():
                ortho = _orthogonalize(torch.stack([u.float() for _, u in items]), tuple(group["ns_coefficients"]),
                                       group["ns_steps"], group["eps"])
                step_lr = _adjust_lr(lr, group["adjust_lr_fn"], torch.Size(shape))
                for (p, _), o in zip(items, ortho):
                    p.mul_(1 - lr * wd)
                    p.add_(o.to(p.dtype), alpha=-step_lr)
        return loss


def hidden_matrices(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(hidden 2-D weights, other matrices [embeddings, head], 1-D params [norms, biases]), trainable only."""
    skip = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        skip |= {id(p) for p in head.parameters()}
    hidden, other, flat = [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (flat if p.dim() < 2 else other if id(p) in skip or p.dim() != 2 else hidden).append(p)
    return hidden, other, flat


class MuonAdamW(torch.optim.Optimizer):
    """Two optimizers behind one interface (param_groups, step, zero_grad, state_dict), so the loop, accelerate,
    GradScaler and checkpoints treat it as one. The state dict numbers Muon's parameters first, then AdamW's."""

    def __init__(self, muon_groups: list[dict], adam_groups: list[dict], *, lr: float, betas: tuple[float, float],
                 momentum: float = 0.95):
        params = [p for g in muon_groups + adam_groups for p in g["params"]]
        super().__init__(params, {"lr": lr})
        self.muon = BatchedMuon(muon_groups, lr=lr, momentum=momentum, nesterov=True,
                                     adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adam_groups, lr=lr, betas=betas, eps=1e-8)
        self.param_groups = self.muon.param_groups + self.adamw.param_groups  # the same dicts: lr set here sticks

    @property
    def state(self):  # read by GradScaler / accelerate; writes go through the inner optimizers
        return {**self.muon.state, **self.adamw.state}

    @state.setter
    def state(self, value):  # Optimizer.__init__ assigns it once
        pass

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        m, a = self.muon.state_dict(), self.adamw.state_dict()
        n = sum(len(g["params"]) for g in m["param_groups"])
        state = {**m["state"], **{i + n: s for i, s in a["state"].items()}}
        groups = m["param_groups"] + [{**g, "params": [i + n for i in g["params"]]} for g in a["param_groups"]]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        k = len(self.muon.param_groups)
        n = sum(len(g["params"]) for g in self.muon.param_groups)
        groups = state_dict["param_groups"]
        state = {int(i): s for i, s in state_dict["state"].items()}
        self.muon.load_state_dict({"state": {i: s for i, s in state.items() if i < n}, "param_groups": groups[:k]})
        self.adamw.load_state_dict({"state": {i - n: s for i, s in state.items() if i >= n},
                                    "param_groups": [{**g, "params": [i - n for i in g["params"]]}
                                                     for g in groups[k:]]})
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """cfg.optimizer "muon": Muon on hidden matrices + AdamW on the rest; "adamw": AdamW on everything. Weight
    decay applies to matrices only (never to norms, biases or other 1-D params)."""
    hidden, other, flat = hidden_matrices(model)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "muon" and hidden:
        adam = [g for g in ({"params": other, "weight_decay": cfg.weight_decay},
                            {"params": flat, "weight_decay": 0.0}) if g["params"]]
        return MuonAdamW([{"params": hidden, "weight_decay": cfg.weight_decay}], adam, lr=cfg.peak_lr(), betas=betas,
                         momentum=cfg.muon_momentum)
    groups = [g for g in ({"params": hidden + other, "weight_decay": cfg.weight_decay},
                          {"params": flat, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.peak_lr(), betas=betas, eps=1e-8)
