"""The short_conv block: LFM2's gated short convolution as the token mixer, `x + conv(norm(x))`, followed by an MLP
`x + mlp(norm(x))`; `repeat` layers each with its own weights.

One projection gives three vectors per token, b, c and v; the mixer is

    y_t = c_t ⊙ Σ_{j<L} w_j ⊙ (b ⊙ v)_{t-j}         (a depthwise causal convolution over the last L tokens)

followed by an output projection. Each channel sees only the last L tokens (L = 3 in LFM2), so a generation keeps
just the last L-1 gated inputs per layer: a fixed-size state, no KV cache. A few attention layers among them (a
transformer block, with QK-norm for LFM2) carry information further back. Names follow transformers' LFM2
(conv.in_proj, conv.conv, conv.out_proj).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..assembly import affine, layer_states
from ..fields import Problem, setting
from .mamba2 import MixerLayer, layer_costs, layer_tensors
from .mlp import MLPSpec, mlp_words
from .norm import NormSpec, norm_problems
from .transformer import LFM2_NAMES

TYPE = "short_conv"
ROLE = "layer"
BRANCHES = 2


@dataclass
class ConvSpec:
    """LFM2's gated depthwise convolution over the last `kernel` tokens."""

    WHAT: ClassVar[str] = "short convolution settings"
    kernel: int = setting(3, lo=1, hi=64, label="Kernel (tokens)", help="how many recent tokens each channel mixes")
    bias: bool = setting(False, label="Conv bias", help="bias on the projections and the convolution")


@dataclass
class Spec:
    """Gated short-convolution layers (LFM2): each token mixes the last few tokens, then an MLP."""

    type: Literal["short_conv"] = "short_conv"
    repeat: int = setting(1, lo=1, hi=256, label="Layers (repeat)",
                          help="how many layers of this kind, each with its own weights")
    conv: ConvSpec = setting(factory=ConvSpec)
    norm: NormSpec = setting(factory=lambda: NormSpec(kind="rmsnorm"))
    mlp: MLPSpec | None = setting(factory=lambda: MLPSpec(activation="silu", gated=True), empty="no MLP",
                                  help="the MLP after the convolution in every layer")


class ShortConv(nn.Module):
    def __init__(self, d_model: int, c: ConvSpec, slot: int):
        super().__init__()
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=c.bias)  # b, c, v
        self.conv = nn.Conv1d(d_model, d_model, c.kernel, groups=d_model, bias=c.bias, padding=c.kernel - 1)
        self.out_proj = nn.Linear(d_model, d_model, bias=c.bias)
        self.out_proj.is_residual_proj = True  # scaled init, see SLMPreTrainedModel._init_weights
        self.kernel, self.slot = c.kernel, slot

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        T = x.shape[1]
        if ctx.key_padding is not None:  # a padded token contributes nothing to later tokens
            x = x * ctx.key_padding[:, -T:, None].to(x.dtype)
        b, c, v = self.in_proj(x).transpose(1, 2).chunk(3, dim=1)  # (B, C, T) each
        bv = b * v
        states = layer_states(ctx.cache) if ctx.cache is not None else None
        past = states.get(self.slot) if states is not None else None
        if past is None:
            past = bv.new_zeros(*bv.shape[:2], self.kernel - 1)
        bv = torch.cat([past, bv], dim=-1)  # (B, C, L-1 + T)
        if states is not None:
            states[self.slot] = bv[:, :, bv.shape[-1] - (self.kernel - 1):]
        y = c * F.conv1d(bv, self.conv.weight, self.conv.bias, groups=bv.shape[1])  # (B, C, T)
        return self.out_proj(y.transpose(1, 2))

    def step(self, decoding):
        """One token (C,) -> (C,): the convolution over the kept window and this token's gated input."""
        cache, slot = decoding.cache, self.slot
        w_in, b_in, w, bias = self.in_proj.weight, self.in_proj.bias, self.conv.weight[:, 0], self.conv.bias
        w_out, b_out = self.out_proj.weight, self.out_proj.bias

        def conv(x: torch.Tensor) -> torch.Tensor:
            b, c, v = affine(w_in, b_in, x).chunk(3)
            window = layer_states(cache)[slot][0]  # (C, L-1), updated in place
            full = torch.cat([window, (b * v)[:, None]], dim=1)  # (C, L)
            window.copy_(full[:, 1:])
            y = (full * w).sum(-1)
            return affine(w_out, b_out, c * (y if bias is None else y + bias))
        return conv


# ----------------------------------------------------------------------------- the block's hooks


def check(block: Spec, spec, at: str) -> list[Problem]:
    return norm_problems(block.norm, at)


def plan(block: Spec) -> list:
    return [(None, None)] * block.repeat


def build(block: Spec, spec, build) -> list[nn.Module]:
    return [MixerLayer(spec.d_model, "conv", ShortConv(spec.d_model, block.conv, build.next_state_slot()), block,
                       spec.dropout) for _ in range(block.repeat)]


def forward(layer: MixerLayer, x: torch.Tensor, ctx) -> torch.Tensor:
    return layer.forward(x, ctx)


def step(layer: MixerLayer, decoding):
    return layer.step(decoding)


def conv_tensors(prefix: str, C: int, c: ConvSpec) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for name, shape in (("in_proj", (3 * C, C)), ("conv", (C, 1, c.kernel)), ("out_proj", (C, C))):
        out += [(f"{prefix}.{name}.weight", shape)] + ([(f"{prefix}.{name}.bias", (shape[0],))] if c.bias else [])
    return out


def tensors(block: Spec, spec, first_layer: int) -> list:
    return layer_tensors(block, spec, first_layer, "conv", lambda prefix: conv_tensors(prefix, spec.d_model,
                                                                                         block.conv))


def conv_costs(C: int, c: ConvSpec, acc) -> None:
    acc.matmul += 3 * C * C + C * C + C * c.kernel
    acc.act += C + 3 * C + 2 * C + C  # in_proj input and output, gated input and convolution, gated output
    acc.state_bytes += C * (c.kernel - 1) * acc.nbytes


def costs(block: Spec, spec, acc) -> None:
    layer_costs(block, spec, acc, lambda a: conv_costs(spec.d_model, block.conv, a))


def shapes(block: Spec, spec) -> list[tuple[str, str]]:
    C, L = spec.d_model, block.conv.kernel
    out = [("residual stream in and out", f"(B, T, {C})"), ("b, c, v", f"(B, {C}, T) each"),
           ("state carried between tokens", f"(B, {C}, {L - 1}), the same size at any length")]
    return out + ([("MLP hidden", f"(B, T, {block.mlp.hidden_size(C)})")] if block.mlp else [])


def describe(block: Spec, spec) -> tuple[str, str]:
    name = f"short_conv×{block.repeat}" if block.repeat > 1 else "short_conv"
    mlp = f", {mlp_words(spec, block.mlp)}" if block.mlp else ""
    return name, f"gated short convolution over {block.conv.kernel} tokens{mlp}, pre-{block.norm.kind}"


# ----------------------------------------------------------------------------- export and pruning


def settings(block: Spec) -> tuple:
    return (block.conv, block.norm, block.mlp)


def native(block: Spec, spec) -> dict:
    """Its layers for the family rules (sharing/native.py): transformers' LFM2, with LFM2's names for ours."""
    return {"layers": [block] * block.repeat, "layer_names": {"lfm2": LFM2_NAMES}}


def gguf(block: Spec, spec) -> dict:
    names = {"conv.in_proj": "shortconv.in_proj", "conv.conv": "shortconv.conv", "conv.out_proj": "shortconv.out_proj",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    return {"layer_names": {"*": names}, "layers": block.repeat}


prune = "a short-convolution layer is kept whole: its three gates share one projection, and pruning channels " \
        "of the convolution needs care this tool does not take yet"
