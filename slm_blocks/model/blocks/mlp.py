"""The mlp block: one feed-forward layer with a residual connection, `x + mlp(norm(x))`, for free layer orders; and
the feed-forward network itself (settings, module, one-token step), which the transformer block uses too:
up-project, nonlinearity (optionally gated), down-project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..assembly import affine, unchanged
from ..fields import Problem, setting
from .norm import NormSpec, make_norm, norm_act, norm_problems, norm_step, norm_tensors

TYPE = "mlp"
ROLE = "layer"
BRANCHES = 1

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


@dataclass
class MLPSpec:
    """Position-wise feed-forward network; gated = GLU variant (SwiGLU = silu + gated)."""

    WHAT: ClassVar[str] = "mlp settings"
    activation: Literal["gelu", "gelu_tanh", "relu", "silu"] = setting("gelu", label="Activation", help="nonlinearity")
    gated: bool = setting(False, label="Gated (GLU)", help="multiply by a learned gate (SwiGLU / GeGLU)")
    hidden: int | None = setting(None, lo=1, hi=1 << 18, label="Hidden width", empty="4 × d_model",
                                 help="hidden width (empty: 4 × d_model)")
    bias: bool = setting(False, label="MLP bias", help="bias on the projections")

    def hidden_size(self, d_model: int) -> int:
        """Hidden width: hidden, or 4 × d_model when empty (GPT-2's ratio)."""
        return self.hidden or 4 * d_model


@dataclass
class Spec:
    """One standalone MLP layer with a residual connection, for free layer orders."""

    type: Literal["mlp"] = "mlp"
    mlp: MLPSpec = setting(factory=MLPSpec)
    norm: NormSpec | None = setting(factory=NormSpec, help="norm before the layer (absent: no norm)")


# ----------------------------------------------------------------------------- the MLP module


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

    def step(self, decoding):
        """The same on one token's vector (C,) -> (C,), each projection one matrix-vector op."""
        act, gated = self.act, self.gated
        wg, bg = (self.gate_proj.weight, self.gate_proj.bias) if gated else (None, None)
        wu, bu, wd, bd = self.up_proj.weight, self.up_proj.bias, self.down_proj.weight, self.down_proj.bias

        def mlp(x: torch.Tensor) -> torch.Tensor:
            h = act(affine(wg, bg, x)) * affine(wu, bu, x) if gated else act(affine(wu, bu, x))  # (H,)
            return affine(wd, bd, h)
        return mlp


# ----------------------------------------------------------------------------- what an MLP adds up to


def mlp_tensors(prefix: str, spec, m: MLPSpec) -> list[tuple[str, tuple[int, ...]]]:
    C, H = spec.d_model, m.hidden_size(spec.d_model)
    out = []
    for name, shape in ((("gate_proj", (H, C)),) if m.gated else ()) + (("up_proj", (H, C)), ("down_proj", (C, H))):
        out.append((f"{prefix}.{name}.weight", shape))
        if m.bias:
            out.append((f"{prefix}.{name}.bias", (shape[0],)))
    return out


def mlp_costs(spec, m: MLPSpec, acc) -> None:
    C, H = spec.d_model, m.hidden_size(spec.d_model)
    acc.matmul += (3 if m.gated else 2) * C * H
    acc.act += C + (4 if m.gated else 2) * H  # MLP input; hidden pre-activations, activations (gate, product)


def mlp_words(spec, m: MLPSpec) -> str:
    return f"{'gated ' if m.gated else ''}{m.activation} MLP {m.hidden_size(spec.d_model)}"


# ----------------------------------------------------------------------------- the block's hooks


def check(block: Spec, spec, at: str) -> list[Problem]:
    return norm_problems(block.norm, at)


def plan(block: Spec) -> list:
    return [(None, None)]


def residual(x, mlp, norm, drop):
    """x + mlp(norm(x)): the layer's computation, for the forward and the one-token step."""
    return x + drop(mlp(norm(x)))


class MLPLayer(nn.Module):
    def __init__(self, d_model: int, block: Spec, dropout: float):
        super().__init__()
        self.input_layernorm = make_norm(block.norm, d_model) if block.norm else nn.Identity()
        self.mlp = MLP(d_model, block.mlp)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return forward(self, x, ctx)

    def step(self, decoding):
        return step(self, decoding)


def build(block: Spec, spec, build) -> list[nn.Module]:
    return [MLPLayer(spec.d_model, block, spec.dropout)]


def forward(layer: MLPLayer, x: torch.Tensor, ctx) -> torch.Tensor:
    return residual(x, layer.mlp, layer.input_layernorm, layer.drop)


def step(layer: MLPLayer, decoding):
    mlp, norm = layer.mlp.step(decoding), norm_step(layer.input_layernorm)
    return lambda x, pos: residual(x, mlp, norm, unchanged)


def tensors(block: Spec, spec, first_layer: int) -> list:
    p = f"model.layers.{first_layer}"
    return norm_tensors(f"{p}.input_layernorm", block.norm, spec.d_model) + mlp_tensors(f"{p}.mlp", spec, block.mlp)


def costs(block: Spec, spec, acc) -> None:
    acc.act += norm_act(block.norm, spec.d_model) + acc.dropout_mask
    mlp_costs(spec, block.mlp, acc)


def shapes(block: Spec, spec) -> list[tuple[str, str]]:
    return [("residual stream in and out", f"(B, T, {spec.d_model})"),
            ("MLP hidden", f"(B, T, {block.mlp.hidden_size(spec.d_model)})")]


def describe(block: Spec, spec) -> tuple[str, str]:
    return "mlp", mlp_words(spec, block.mlp)


native = "a standalone MLP layer has no native transformers class (a free layer order)"
gguf = "llama.cpp has no architecture with standalone MLP layers (a free layer order)"


def prune(block: Spec, spec=None) -> dict:
    return {"droppable": True, "attention": None, "mlp": block.mlp,
            "shrink": lambda raw, dropped: None if dropped else raw}
