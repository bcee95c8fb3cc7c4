"""Where tokens are: positional encodings and the attention masks that go with them.

Everything here is computed on the fly from position ids (no buffers), so a model loaded with
`from_pretrained` or moved between devices never carries stale tables, and left-padded batches
get the right positions.
"""

from __future__ import annotations

import math

import torch


# ----------------------------------------------------------------------------- RoPE


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (B, T, head_dim) for the half-split convention used by transformers (rotate_half)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float()
                                / head_dim))  # (hd/2,)
    freqs = positions.float()[..., None] * inv_freq  # (B, T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, hd) queries or keys by their positions."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, hd)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# ----------------------------------------------------------------------------- added encodings


def sinusoidal(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """The fixed sin/cos encoding of "Attention Is All You Need": (B, T) -> (B, T, d_model)."""
    inv_freq = torch.exp(torch.arange(0, d_model, 2, device=positions.device).float() * (-math.log(10000.0) / d_model))
    angles = positions.float()[..., None] * inv_freq  # (B, T, d/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # interleaved sin, cos


# ----------------------------------------------------------------------------- ALiBi


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head slopes from the ALiBi paper: a geometric sequence, interleaved when n_heads is not a power of 2."""
    def powers(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = powers(closest)
    if closest < n_heads:
        slopes += powers(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes)


# ----------------------------------------------------------------------------- masks


def attention_mask(
    q_len: int,
    kv_len: int,
    key_padding: torch.Tensor | None,  # (B, kv_len) bool, True = real token; None = no padding
    window: int | None,
    slopes: torch.Tensor | None,  # (H,) for ALiBi
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor | None, bool]:
    """The mask for `scaled_dot_product_attention` as (attn_mask, is_causal).

    Queries are the last `q_len` of `kv_len` cached positions. Returns (None, True) for the plain
    causal case so SDPA can take its fastest path.
    """
    windowed = window is not None and window < kv_len
    if key_padding is None and not windowed and slopes is None:
        if q_len == kv_len:
            return None, True
        if q_len == 1:
            return None, False  # a single new token may see the whole cache
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(kv_len, device=device)[None, :]  # (1, S)
    allowed = k_pos <= q_pos  # (T, S) causal
    if windowed:
        allowed = allowed & (q_pos - k_pos < window)
    allowed = allowed[None, None]  # (1, 1, T, S)
    if key_padding is not None:
        # padded keys are hidden; a query always sees itself so no row is empty (its output is ignored anyway)
        allowed = (allowed & key_padding[:, None, None, :]) | (k_pos == q_pos)
    if slopes is None:
        return allowed, False
    bias = -slopes.to(device=device, dtype=torch.float32)[:, None, None] * (q_pos - k_pos)  # (H, T, S)
    return bias[None].to(dtype).masked_fill(~allowed, float("-inf")), False
