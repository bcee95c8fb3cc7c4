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


class TransformerLayer(nn.Module):
    """x + attn(x) then x + mlp(x) (or both from the same x when parallel), with norms where placed."""

    def __init__(self, d_model: int, block: TransformerBlock, attn: Attention, dropout: float):
        super().__init__()
        self.self_attn = attn
        self.mlp = MLP(d_model, block.mlp)
        self.norm_names = NORM_NAMES[block.norm_placement]
        for name in self.norm_names:
            if name:
                self.add_module(name, make_norm(block.norm, d_model))
        self.classic_post = block.norm_placement == "classic_post"
        self.parallel = block.residual == "parallel"
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _norm(self, slot: int, x: torch.Tensor) -> torch.Tensor:
        name = self.norm_names[slot]
        return getattr(self, name)(x) if name else x

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if self.classic_post:  # original Transformer: normalize after each residual add
            x = self._norm(1, x + self.drop(self.self_attn(x, ctx)))
            return self._norm(3, x + self.drop(self.mlp(x)))
        a = self._norm(1, self.self_attn(self._norm(0, x), ctx))  # (B, T, C)
        if self.parallel:  # GPT-J / NeoX: attention and MLP both read x
            return x + self.drop(a + self._norm(3, self.mlp(self._norm(2, x))))
        x = x + self.drop(a)
        return x + self.drop(self._norm(3, self.mlp(self._norm(2, x))))


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
