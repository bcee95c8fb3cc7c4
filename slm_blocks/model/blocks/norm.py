"""The norm block: a normalization on the residual stream between layers, and the norm settings and modules every
block with a norm uses (LayerNorm: center and scale; RMSNorm: scale only, as in Llama).

As a layer it is `x = norm(x)`, with no residual connection. Its weights are `model.layers.{i}.norm.*`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..assembly import unchanged
from ..fields import Problem, join, setting

TYPE = "norm"
ROLE = "layer"
BRANCHES = 0  # residual branches per layer (the residual projections' init is scaled by their count)


@dataclass
class NormSpec:
    """How to normalize activations: LayerNorm (mean and scale) or RMSNorm (scale only)."""

    WHAT: ClassVar[str] = "norm settings"
    kind: Literal["layernorm", "rmsnorm"] = setting("rmsnorm", label="Norm kind", help="layernorm or rmsnorm")
    eps: float = setting(1e-5, lo=1e-12, hi=0.1, label="Norm epsilon", help="small constant added to the variance")
    bias: bool = setting(False, label="Norm bias", help="learn an additive bias (layernorm only)",
                         applies=lambda norm: norm.kind == "layernorm")


@dataclass
class Spec:
    """A normalization on the residual stream between layers."""

    type: Literal["norm"] = "norm"
    norm: NormSpec = setting(factory=NormSpec)


# ----------------------------------------------------------------------------- the norm modules (shared)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) * weight over the last dimension, computed in float32 like transformers' Llama so exported logits
    match; works on (B, T, C), on one token's (C,) and on a stack of heads (n, hd)."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def make_norm(spec: NormSpec, dim: int) -> nn.Module:
    if spec.kind == "rmsnorm":
        return RMSNorm(dim, spec.eps)
    return nn.LayerNorm(dim, eps=spec.eps, bias=spec.bias)


def norm_step(module: nn.Module):
    """A norm on one token's vector: the module's own forward (skipping nn.Module.__call__), which works on (C,)
    as on (B, T, C); an Identity is no call at all."""
    return unchanged if isinstance(module, nn.Identity) else module.forward


def norm_tensors(prefix: str, norm: NormSpec | None, dim: int) -> list[tuple[str, tuple[int, ...]]]:
    if norm is None:
        return []
    return [(f"{prefix}.weight", (dim,))] + ([(f"{prefix}.bias", (dim,))] if norm.kind == "layernorm" and norm.bias
                                            else [])


def norm_act(norm: NormSpec | None, dim: int) -> int:
    """Values per token a norm keeps for its backward: its input (RMSNorm also its normalised input)."""
    if norm is None:
        return 0
    return dim * (2 if norm.kind == "rmsnorm" else 1)


def norm_problems(norm: NormSpec | None, at: str) -> list[Problem]:
    if norm is not None and norm.bias and norm.kind == "rmsnorm":
        return [Problem(join(at, "norm.bias"), "RMSNorm has no bias; set bias to false or kind to 'layernorm'")]
    return []


# ----------------------------------------------------------------------------- the block's hooks


def check(block: Spec, spec, at: str) -> list[Problem]:
    return norm_problems(block.norm, at)


def plan(block: Spec) -> list:
    return [(None, None)]  # one layer, no attention


class NormLayer(nn.Module):
    def __init__(self, d_model: int, block: Spec):
        super().__init__()
        self.norm = make_norm(block.norm, d_model)

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return forward(self, x, ctx)

    def step(self, decoding):
        return step(self, decoding)


def build(block: Spec, spec, build) -> list[nn.Module]:
    return [NormLayer(spec.d_model, block)]


def forward(layer: NormLayer, x: torch.Tensor, ctx) -> torch.Tensor:
    return layer.norm(x)


def step(layer: NormLayer, decoding):
    norm = norm_step(layer.norm)
    return lambda x, pos: norm(x)


def tensors(block: Spec, spec, first_layer: int) -> list:
    return norm_tensors(f"model.layers.{first_layer}.norm", block.norm, spec.d_model)


def costs(block: Spec, spec, acc) -> None:
    acc.act += norm_act(block.norm, spec.d_model)


def shapes(block: Spec, spec) -> list[tuple[str, str]]:
    return [("residual stream in and out", f"(B, T, {spec.d_model})")]


def describe(block: Spec, spec) -> tuple[str, str]:
    return "norm", block.norm.kind


native = "a norm between layers has no native transformers class (a free layer order)"
gguf = "llama.cpp has no architecture with a norm between layers (a free layer order)"


def prune(block: Spec, spec=None) -> dict:
    """A norm layer has no neurons or heads, and dropping it would change what the next layer reads: it stays."""
    return {"droppable": False, "attention": None, "mlp": None, "shrink": lambda raw, dropped: raw}
