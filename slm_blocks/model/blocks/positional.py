"""The positional block: where each token is. Learned or sinusoidal vectors are added to the token vectors;
RoPE rotates queries and keys and ALiBi adds a distance penalty inside attention (blocks/attention.py reads
`rope_tables` / `alibi_slopes` from here); "none" gives the model no position information.

Everything is computed on the fly from position ids (no buffers), so a model loaded with `from_pretrained` or
moved between devices never carries stale tables, and left-padded batches get the right positions. The one-token
step computes each table once per generation for every position, and slices it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..fields import Problem, join, setting

TYPE = "positional"
ROLE = "positional"
BRANCHES = 0

ADDED = ("learned", "sinusoidal")  # kinds added to the token vectors (the others act inside attention)


@dataclass
class Spec:
    """Tells the model where each token is: added vectors (learned, sinusoidal) or inside attention (rope, alibi)."""

    type: Literal["positional"] = "positional"
    kind: Literal["learned", "sinusoidal", "rope", "alibi", "none"] = setting("rope", label="Kind",
                                                                               help="how positions are encoded")
    rope_theta: float = setting(10000.0, lo=1.0, hi=1e9, label="RoPE base", help="RoPE base frequency",
                                applies=lambda b: b.kind == "rope")
    local_rope_theta: float | None = setting(None, lo=1.0, hi=1e9, label="RoPE base (window)",
                                             empty="same as the RoPE base",
                                             help="RoPE base for sliding-window layers (Gemma 3)",
                                             applies=lambda b: b.kind == "rope")

    def theta_for(self, window: int | None) -> float | None:
        """The RoPE base of a layer with this sliding window (None: the layer does not rotate)."""
        if self.kind != "rope":
            return None
        return self.local_rope_theta if window is not None and self.local_rope_theta is not None else self.rope_theta


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


def rope_step_tables(decoding, theta: float, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) for every position of a generation, (max_len, hd) each, with rotate_half's sign folded into sin:
    x·cos + roll(x, hd/2)·sin is apply_rope for one position."""
    def make():
        positions = torch.arange(decoding.max_len, device=decoding.device)[None]  # (1, max_len)
        cos, sin = rope_tables(positions, head_dim, theta)  # (1, max_len, hd), as the forward
        half = head_dim // 2
        sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
        return cos[0].to(decoding.dtype), sin.to(decoding.dtype)
    return decoding.table(("rope", theta, head_dim), make)


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


def alibi_step_table(decoding, n_heads: int) -> torch.Tensor:
    """(nh, max_len): column j holds -slope · (max_len - 1 - j), so a query at `pos` reads the last pos + 1."""
    def make():
        dist = torch.arange(decoding.max_len - 1, -1, -1, device=decoding.device)
        bias = -alibi_slopes(n_heads).to(device=decoding.device, dtype=torch.float32)[:, None] * dist
        return bias.to(decoding.dtype)
    return decoding.table(("alibi", n_heads), make)


# ----------------------------------------------------------------------------- added encodings


def sinusoidal(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """The fixed sin/cos encoding of "Attention Is All You Need": (B, T) -> (B, T, d_model)."""
    inv_freq = torch.exp(torch.arange(0, d_model, 2, device=positions.device).float() * (-math.log(10000.0) / d_model))
    angles = positions.float()[..., None] * inv_freq  # (B, T, d/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # interleaved sin, cos


# ----------------------------------------------------------------------------- the block's hooks


def check(block: Spec, spec, at: str) -> list[Problem]:
    problems = []
    if block.local_rope_theta is not None and block.kind != "rope":
        problems.append(Problem(join(at, "local_rope_theta"), "is only used with kind 'rope'; leave it empty"))
    if block.kind == "sinusoidal" and spec.d_model % 2:
        problems.append(Problem("d_model", f"is {spec.d_model}; sinusoidal positions need an even d_model"))
    return problems


def plan(block: Spec) -> list:
    return []


def build(block: Spec, spec, build) -> dict:
    """`positional` (its kind, what forward adds) on the model body, and learned positions' `embed_positions`;
    the kind and RoPE bases reach the attention layers through `build.positional`."""
    parts = {"positional": block.kind}
    if block.kind == "learned":
        parts["embed_positions"] = nn.Embedding(spec.max_seq_len, spec.d_model)
    return parts


def forward(body, x: torch.Tensor, position_ids: torch.Tensor, ctx) -> torch.Tensor:
    """Add learned or sinusoidal vectors to x (B, T, C); RoPE tables for every (base, head size) the attention
    layers rotate with go into ctx, computed once for all of them."""
    if body.positional == "learned":
        x = x + body.embed_positions(position_ids)
    elif body.positional == "sinusoidal":
        x = x + sinusoidal(position_ids, x.shape[-1]).to(x.dtype)
    ctx.rope = {(theta, hd): rope_tables(position_ids, hd, theta) for theta, hd in body.rope_keys}
    return x


def step(body, decoding):
    """x (C,) at position pos -> x plus its position vector (nothing for RoPE, ALiBi and none)."""
    if body.positional == "learned":
        table = body.embed_positions.weight
    elif body.positional == "sinusoidal":
        positions = torch.arange(decoding.max_len, device=decoding.device)[None]
        table = sinusoidal(positions, body.embed_tokens.weight.shape[1])[0].to(decoding.dtype)
    else:
        return lambda x, pos: x
    return lambda x, pos: x + table[pos]


def tensors(block: Spec, spec, first_layer: int) -> list:
    return [("model.embed_positions.weight", (spec.max_seq_len, spec.d_model))] if block.kind == "learned" else []


def costs(block: Spec, spec, acc) -> None:
    pass  # an embedding lookup or a sum: no matrix, nothing kept


def shapes(block: Spec, spec) -> list[tuple[str, str]]:
    return [("residual stream in and out", f"(B, T, {spec.d_model})")]


WHAT_IT_DOES = {
    "learned": "one learned vector per position, added to the token vectors",
    "sinusoidal": "no weights: fixed sine waves added to the token vectors",
    "rope": "no weights: rotates queries and keys by position inside attention",
    "alibi": "no weights: a distance penalty added to the attention scores",
    "none": "no weights and no position information",
}


def describe(block: Spec, spec) -> tuple[str, str]:
    return block.kind, WHAT_IT_DOES[block.kind]


def native(block: Spec, spec) -> dict:
    """Traits the family rules read (sharing/native.py); learned positions are GPT-2's `wpe`."""
    return {"traits": {"positional": block.kind, "rope_theta": block.rope_theta,
                       "local_rope_theta": block.local_rope_theta},
            "names": {"gpt2": {"model.embed_positions": ("transformer.wpe", False)}}}


gguf = {"names": {"model.embed_positions": "position_embd"}}
prune = "kept whole: pruning removes layers, MLP neurons and attention heads"
