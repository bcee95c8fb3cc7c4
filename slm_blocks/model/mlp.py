"""The feed-forward block: up-project, nonlinearity (optionally gated), down-project."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import MLPSpec

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """down(act(up(x))), or with gating down(act(gate(x)) * up(x)) — SwiGLU when act is silu."""

    def __init__(self, d_model: int, spec: MLPSpec):
        super().__init__()
        hidden = spec.hidden_size(d_model)
        if spec.gated:
            self.gate_proj = nn.Linear(d_model, hidden, bias=spec.bias)
        self.up_proj = nn.Linear(d_model, hidden, bias=spec.bias)
        self.down_proj = nn.Linear(hidden, d_model, bias=spec.bias)
        self.down_proj.is_residual_proj = True  # scaled init, see SLMPreTrainedModel._init_weights
        self.act = ACTIVATIONS[spec.activation]
        self.gated = spec.gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        h = self.act(self.gate_proj(x)) * self.up_proj(x) if self.gated else self.act(self.up_proj(x))  # (B, T, H)
        return self.down_proj(h)
