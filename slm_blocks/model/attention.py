"""Causal self-attention with MHA / GQA / MQA, optional QK-norm, RoPE or ALiBi, a sliding window and a KV cache."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .norms import RMSNorm
from .positions import alibi_slopes, apply_rope, attention_mask
from .spec import AttentionSpec


@dataclass
class AttentionContext:
    """What every attention layer of one forward pass shares: the cache, padding, RoPE tables, mask memo."""

    key_padding: torch.Tensor | None  # (B, S) bool, True = real token, over cached + new positions
    cache: object | None = None  # a transformers Cache, or None
    rope: dict = field(default_factory=dict)  # (theta, head_dim) -> (cos, sin), each (B, T, hd)
    masks: dict = field(default_factory=dict)  # memo of attention_mask() results
    attentions: list | None = None  # explain mode: each attention layer appends its (B, nh, T, S) probabilities


class Attention(nn.Module):
    def __init__(self, d_model: int, spec: AttentionSpec, *, norm_eps: float, window: int | None,
                 rope_theta: float | None, alibi: bool, cache_index: int):
        super().__init__()
        self.n_heads = spec.n_heads
        self.n_kv_heads = spec.kv_heads()
        self.head_dim = spec.head_size(d_model)
        self.q_proj = nn.Linear(d_model, self.n_heads * self.head_dim, bias=spec.qkv_bias)
        self.k_proj = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=spec.qkv_bias)
        self.v_proj = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d_model, bias=spec.out_bias)
        self.o_proj.is_residual_proj = True  # scaled init, see SLMPreTrainedModel._init_weights
        if spec.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, norm_eps)
            self.k_norm = RMSNorm(self.head_dim, norm_eps)
        self.qk_norm = spec.qk_norm
        self.window = window  # this layer's sliding window (None = full causal)
        self.rope_theta = rope_theta  # None = no RoPE
        self.alibi = alibi
        self.dropout = spec.dropout
        self.cache_index = cache_index  # this layer's slot in the KV cache

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self._project(x, ctx)  # (B, nh, T, hd), (B, nkv, T, hd), (B, nkv, T, hd)
        if ctx.cache is not None:
            k, v = ctx.cache.update(k, v, self.cache_index)  # (B, nkv, S, hd) with S = past + T
        if self.n_kv_heads != self.n_heads:  # GQA / MQA: each kv head serves a group of query heads
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)  # (B, nh, S, hd)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        mask, causal = self._mask(ctx, T, k.shape[2], q.dtype, q.device)
        if ctx.attentions is not None:  # explain mode: the same attention, written out to keep its probabilities
            y = self._explained(q, k, v, mask, causal, ctx.attentions)  # (B, nh, T, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                               dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, nh*hd)
        return self.o_proj(y)  # (B, T, C)

    def _project(self, x: torch.Tensor, ctx: AttentionContext):
        B, T, C = x.shape
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if all(type(p.weight) is nn.Parameter for p in projs):
            # one matmul for q, k and v (three would each pay their own overhead); weights stay separate for export
            w = torch.cat([p.weight for p in projs])
            b = None if self.q_proj.bias is None else torch.cat([p.bias for p in projs])
            q, k, v = F.linear(x, w, b).split([p.out_features for p in projs], dim=-1)
        else:  # quantized weights (torchao tensor subclasses, see compress/) cannot be concatenated
            q, k, v = (p(x) for p in projs)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope_theta is not None:
            cos, sin = ctx.rope[(self.rope_theta, self.head_dim)]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def _mask(self, ctx: AttentionContext, q_len: int, kv_len: int, dtype, device):
        key = (q_len, kv_len, self.window, self.n_heads if self.alibi else 0, dtype)
        if key not in ctx.masks:
            slopes = alibi_slopes(self.n_heads) if self.alibi else None
            ctx.masks[key] = attention_mask(q_len, kv_len, ctx.key_padding, self.window, slopes, dtype, device)
        return ctx.masks[key]

    def _explained(self, q, k, v, mask, causal: bool, keep: list) -> torch.Tensor:
        """softmax(q·kᵀ / √hd + mask) · v written out, what scaled_dot_product_attention computes in one fused
        call, so the probabilities can be kept for the app's attention maps (no dropout: it is for looking)."""
        T, S = q.shape[2], k.shape[2]
        scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5  # (B, nh, T, S)
        if causal:  # the fast path's is_causal, as a mask: query i sees keys up to its own position
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probs = scores.softmax(-1)  # (B, nh, T, S)
        keep.append(probs)
        return probs @ v  # (B, nh, T, hd)
