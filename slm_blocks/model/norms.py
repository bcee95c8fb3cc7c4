"""Normalization layers: LayerNorm (center and scale) and RMSNorm (scale only, as in Llama)."""

from __future__ import annotations

import torch
from torch import nn

from .spec import NormSpec


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 like transformers' Llama so exported logits match."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(spec: NormSpec, dim: int) -> nn.Module:
    if spec.kind == "rmsnorm":
        return RMSNorm(dim, spec.eps)
    return nn.LayerNorm(dim, eps=spec.eps, bias=spec.bias)
