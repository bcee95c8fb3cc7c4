"""Residual-stream layers: the transformer layer, standalone attention / MLP / norm layers.

Every layer maps (B, T, C) -> (B, T, C). Norm module names follow transformers so export is a rename-free
copy: Llama names for pre-norm, Gemma 3 names for sandwich, OLMo 2 names for post-norm.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention, AttentionContext
from .mlp import MLP
from .norms import make_norm
from .spec import AttentionLayerBlock, MLPLayerBlock, NormBlock, TransformerBlock

# norm_placement -> module names of (attention input, attention output, MLP input, MLP output) norms
NORM_NAMES = {
    "pre": ("input_layernorm", None, "post_attention_layernorm", None),
    "post": (None, "post_attention_layernorm", None, "post_feedforward_layernorm"),
    "classic_post": (None, "post_attention_layernorm", None, "post_feedforward_layernorm"),
    "sandwich": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                 "post_feedforward_layernorm"),
}


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


class TransformerLayer(nn.Module):
    """Attention then MLP, each added back to the residual stream x, with norms where `norm_placement` puts
    them. The usual pre-norm layer (GPT-2, Llama, nanoGPT's Block) reads:

        x = x + attn(input_layernorm(x))
        x = x + mlp(post_attention_layernorm(x))
    """

    def __init__(self, d_model: int, block: TransformerBlock, attn: Attention, dropout: float):
        super().__init__()
        self.self_attn = attn
        self.mlp = MLP(d_model, block.mlp)
        for name in NORM_NAMES[block.norm_placement]:
            if name:
                self.add_module(name, make_norm(block.norm, d_model))
        self.placement = block.norm_placement
        self.parallel = block.residual == "parallel"
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        attn, mlp, drop = (lambda h: self.self_attn(h, ctx)), self.mlp, self.drop
        if self.placement == "pre" and not self.parallel:  # GPT-2, Llama, Mistral, Qwen3
            x = x + drop(attn(self.input_layernorm(x)))
            x = x + drop(mlp(self.post_attention_layernorm(x)))
            return x
        if self.placement == "classic_post":  # the original Transformer: normalize after each residual add
            x = self.post_attention_layernorm(x + drop(attn(x)))
            return self.post_feedforward_layernorm(x + drop(mlp(x)))
        # the other placements: norm the input (pre), the output (post) or both (sandwich, Gemma 3)
        attn_in, attn_out, mlp_in, mlp_out = (getattr(self, n) if n else _unchanged
                                              for n in NORM_NAMES[self.placement])
        a = attn_out(attn(attn_in(x)))  # (B, T, C)
        if self.parallel:  # GPT-J / NeoX: attention and MLP both read the same x
            return x + drop(a + mlp_out(mlp(mlp_in(x))))
        x = x + drop(a)
        return x + drop(mlp_out(mlp(mlp_in(x))))


class AttentionLayer(nn.Module):
    """x + attn(norm(x)): one attention sublayer on its own."""

    def __init__(self, d_model: int, block: AttentionLayerBlock, attn: Attention, dropout: float):
        super().__init__()
        self.input_layernorm = make_norm(block.norm, d_model) if block.norm else nn.Identity()
        self.self_attn = attn
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        return x + self.drop(self.self_attn(self.input_layernorm(x), ctx))


class MLPLayer(nn.Module):
    """x + mlp(norm(x)): one feed-forward sublayer on its own."""

    def __init__(self, d_model: int, block: MLPLayerBlock, dropout: float):
        super().__init__()
        self.input_layernorm = make_norm(block.norm, d_model) if block.norm else nn.Identity()
        self.mlp = MLP(d_model, block.mlp)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        return x + self.drop(self.mlp(self.input_layernorm(x)))


class NormLayer(nn.Module):
    """norm(x) on the residual stream (no residual connection)."""

    def __init__(self, d_model: int, block: NormBlock):
        super().__init__()
        self.norm = make_norm(block.norm, d_model)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        return self.norm(x)
