"""The mamba2 block: a Mamba2 (state-space) token mixer in place of attention, `x + mamba(norm(x))`, optionally
followed by an MLP `x + mlp(norm(x))` (Bamba's hybrid layer); `repeat` layers each with its own weights.

Where attention looks back at every past token's key, a state-space layer carries one fixed-size state per head
(head_dim × d_state numbers) from token to token: memory per sequence stays constant however long it gets. Per
token t and head h, with x_t the head's input, B_t, C_t (d_state,) read from the token, a step size dt_t > 0 and a
learned decay A_h < 0:

    state_t = exp(dt_t · A_h) · state_{t-1} + dt_t · x_t B_tᵀ          (head_dim, d_state)
    y_t     = state_t C_t + D_h · x_t

The one-token step runs exactly this recurrence. Training runs the same function over a whole sequence in chunks
(Mamba2's state-space duality): inside a chunk of Q tokens the recurrence unrolls into an attention-like (Q, Q)
matrix, C_l·B_s times the decay between s and l; between chunks only the state is carried, so the cost is linear
in the sequence length. Around the scan: one input projection gives the gate z, the scan's inputs x, B, C and dt;
a short causal depthwise convolution mixes x, B and C over the last `conv_kernel` tokens; the output is
normalised per group (RMSNorm of y · silu(z)) and projected back. Names follow transformers' Bamba / Mamba2
(in_proj, conv1d, dt_bias, A_log, D, norm, out_proj), so export is a rename.

A generation keeps each layer's convolution window and scan state in `assembly.layer_states(cache)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..assembly import affine, layer_states, unchanged
from ..fields import Problem, join, setting
from .mlp import MLP, MLPSpec, mlp_costs, mlp_tensors, mlp_words
from .norm import NormSpec, make_norm, norm_act, norm_problems, norm_step, norm_tensors
from .transformer import BAMBA_NAMES

TYPE = "mamba2"
ROLE = "layer"
BRANCHES = 2


@dataclass
class Mamba2Spec:
    """Mamba2's state-space mixer: heads of head_dim channels, each with a d_state-wide state."""

    WHAT: ClassVar[str] = "mamba2 settings"
    d_state: int = setting(16, lo=1, hi=1024, label="State size", help="width of each head's state (N)")
    head_dim: int = setting(16, lo=1, hi=1024, label="Head size",
                            help="channels per head; heads = expand × d_model / head_dim")
    expand: int = setting(2, lo=1, hi=8, label="Expand", help="inner width as a multiple of d_model")
    n_groups: int = setting(1, lo=1, hi=64, label="B/C groups", help="heads share B and C within a group")
    conv_kernel: int = setting(4, lo=1, hi=16, label="Conv kernel", help="tokens the short convolution sees")
    chunk_size: int = setting(64, lo=1, hi=4096, label="Chunk size",
                              help="tokens per chunk of the training scan (any value computes the same function)")
    conv_bias: bool = setting(True, label="Conv bias", help="bias on the short convolution")
    proj_bias: bool = setting(False, label="Projection bias", help="bias on the input and output projections")

    def inner(self, d_model: int) -> int:
        return self.expand * d_model

    def heads(self, d_model: int) -> int:
        return self.inner(d_model) // self.head_dim

    def conv_dim(self, d_model: int) -> int:
        """Channels the convolution mixes: x, B and C."""
        return self.inner(d_model) + 2 * self.n_groups * self.d_state


@dataclass
class Spec:
    """Mamba2 state-space layers (a fixed-size state instead of a KV cache), each optionally followed by an MLP."""

    type: Literal["mamba2"] = "mamba2"
    repeat: int = setting(1, lo=1, hi=256, label="Layers (repeat)",
                          help="how many layers of this kind, each with its own weights")
    mamba: Mamba2Spec = setting(factory=Mamba2Spec)
    norm: NormSpec = setting(factory=lambda: NormSpec(kind="rmsnorm"))
    mlp: MLPSpec | None = setting(None, empty="no MLP (Mamba2)",
                                  help="an MLP after the mixer in every layer (Bamba's hybrid layer)")


# ----------------------------------------------------------------------------- the scan


def ssd_scan(x, dt, A, B, C, chunk: int, state=None):
    """The chunked scan (see the module docstring) without the D skip. x (b, T, H, P), dt (b, T, H) after softplus,
    A (H,), B and C (b, T, H, N) already expanded from groups to heads, state (b, H, P, N) or None.
    Returns y (b, T, H, P) and the state after the last token. Inside, every tensor is laid out heads first,
    (b, chunks, H, Q, ·), so each product is one batched matmul without copies."""
    b, T, H, P = x.shape
    pad = (-T) % chunk  # padded tokens get dt = 0: no decay and no input, the state passes through unchanged
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    n = (T + pad) // chunk
    x, B, C = (t.reshape(b, n, chunk, H, -1).transpose(2, 3) for t in (x, B, C))  # (b, n, H, Q, ·)
    dt = dt.reshape(b, n, chunk, H).transpose(2, 3)  # (b, n, H, Q)
    xdt = x * dt[..., None]  # (b, n, H, Q, P)
    s = (dt * A[:, None]).cumsum(-1)  # (b, n, H, Q): log of the decay from the chunk's start to each token
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    decay = (s[..., :, None] - s[..., None, :]).masked_fill(~causal, -math.inf).exp()  # (b, n, H, l, s)
    y = ((C @ B.transpose(-1, -2)) * decay) @ xdt  # (b, n, H, Q, P): the chunk's unrolled recurrence
    to_end = (s[..., -1:] - s).exp()  # (b, n, H, Q): decay from each token to the chunk's end
    chunk_states = xdt.transpose(-1, -2) @ (B * to_end[..., None])  # (b, n, H, P, N)
    h = x.new_zeros(b, H, P, B.shape[-1]) if state is None else state.to(x.dtype)
    starts = []
    for c in range(n):  # between chunks only the state travels
        starts.append(h)
        h = h * s[:, c, :, -1].exp()[:, :, None, None] + chunk_states[:, c]
    y = y + (C @ torch.stack(starts, 1).transpose(-1, -2)) * s.exp()[..., None]  # from the state at the start
    return y.transpose(2, 3).reshape(b, n * chunk, H, P)[:, :T], h


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group: int, eps: float) -> torch.Tensor:
    """RMSNorm of y · silu(z) within groups of `group` channels (Mamba2's norm before out_proj), in float32."""
    dtype = y.dtype
    y = y.float() * F.silu(z.float())
    g = y.view(*y.shape[:-1], -1, group)
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return weight * g.view(y.shape).to(dtype)


class GatedNorm(nn.Module):
    def __init__(self, dim: int, group: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group, self.eps = group, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(y, z, self.weight, self.group, self.eps)


class Mamba2Mixer(nn.Module):
    def __init__(self, d_model: int, m: Mamba2Spec, eps: float, slot: int):
        super().__init__()
        self.inner, self.n_heads, self.head_dim = m.inner(d_model), m.heads(d_model), m.head_dim
        self.n_groups, self.d_state, self.chunk, self.kernel = m.n_groups, m.d_state, m.chunk_size, m.conv_kernel
        self.conv_dim = m.conv_dim(d_model)
        self.in_proj = nn.Linear(d_model, self.inner + self.conv_dim + self.n_heads, bias=m.proj_bias)  # z, xBC, dt
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, m.conv_kernel, groups=self.conv_dim, bias=m.conv_bias,
                                padding=m.conv_kernel - 1)
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.norm = GatedNorm(self.inner, self.inner // m.n_groups, eps)
        self.out_proj = nn.Linear(self.inner, d_model, bias=m.proj_bias)
        self.out_proj.is_residual_proj = True  # scaled init, see SLMPreTrainedModel._init_weights
        self.slot = slot  # this layer's place in layer_states(cache)

    @torch.no_grad()
    def init_mixer(self):
        """Mamba2's initialisation of what a normal init does not cover (SLMPreTrainedModel._init_weights calls
        it): decays A = -(1..H), D = 1, step sizes log-uniform in [0.001, 0.1] (dt_bias is their inverse softplus), the gated norm at 1."""
        init.copy_(self.A_log, torch.log(torch.arange(1, self.n_heads + 1, dtype=torch.float32)))
        init.ones_(self.D)
        init.ones_(self.norm.weight)
        dt = torch.exp(torch.rand(self.n_heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        init.copy_(self.dt_bias, dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        b, T, _ = x.shape
        mask = None if ctx.key_padding is None else ctx.key_padding[:, -T:, None].to(x.dtype)  # (B, T, 1)
        if mask is not None:  # a padded token adds nothing to the state (left padding leaves it at zero)
            x = x * mask
        z, xbc, dt = self.in_proj(x).split([self.inner, self.conv_dim, self.n_heads], dim=-1)
        states = layer_states(ctx.cache) if ctx.cache is not None else None
        window, state = states.get(self.slot, (None, None)) if states is not None else (None, None)
        xbc = xbc.transpose(1, 2)  # (B, D, T)
        past = xbc.new_zeros(b, self.conv_dim, self.kernel - 1) if window is None else window
        xbc = torch.cat([past, xbc], dim=-1)  # the convolution sees the last kernel-1 tokens before these
        window = xbc[:, :, xbc.shape[-1] - (self.kernel - 1):]
        xbc = F.silu(F.conv1d(xbc, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)).transpose(1, 2)
        if mask is not None:
            xbc = xbc * mask
        xs, B, C = xbc.split([self.inner, self.n_groups * self.d_state, self.n_groups * self.d_state], dim=-1)
        H, P, N, G = self.n_heads, self.head_dim, self.d_state, self.n_groups
        B, C = (t.view(b, T, G, N).repeat_interleave(H // G, dim=2).float() for t in (B, C))  # (B, T, H, N)
        xs = xs.view(b, T, H, P).float()
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (B, T, H)
        A = -torch.exp(self.A_log.float())  # (H,)
        y, state = ssd_scan(xs, dt, A, B, C, self.chunk, state)
        y = y + self.D.float()[:, None] * xs  # the skip
        if states is not None:
            states[self.slot] = (window, state)
        y = self.norm(y.reshape(b, T, self.inner).to(x.dtype), z)
        return self.out_proj(y)  # (B, T, C)

    def step(self, decoding):
        """The recurrence for one token (C,) -> (C,), continuing from the state the prompt's forward left."""
        return _Mamba2Step(self, decoding)


class _Mamba2Step:
    def __init__(self, m: Mamba2Mixer, decoding):
        self.m, self.cache = m, decoding.cache
        self.w_in, self.b_in = m.in_proj.weight, m.in_proj.bias
        self.w_conv, self.b_conv = m.conv1d.weight[:, 0], m.conv1d.bias  # (D, K)
        self.A = -torch.exp(m.A_log.float())
        self.split = [m.inner, m.conv_dim, m.n_heads]
        self.xbc = [m.inner, m.n_groups * m.d_state, m.n_groups * m.d_state]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (C,) -> (C,)
        m = self.m
        window, state = layer_states(self.cache)[m.slot]  # (1, D, K-1), (1, H, P, N), updated in place
        z, xbc, dt = affine(self.w_in, self.b_in, x).split(self.split)
        full = torch.cat([window[0], xbc[:, None]], dim=1)  # (D, K)
        window[0].copy_(full[:, 1:])
        conv = (full * self.w_conv).sum(-1)
        xbc = F.silu(conv if self.b_conv is None else conv + self.b_conv)
        xs, B, C = xbc.split(self.xbc)
        H, G = m.n_heads, m.n_groups
        xs = xs.view(H, m.head_dim).float()
        B, C = (t.view(G, 1, m.d_state).repeat_interleave(H // G, dim=0).float() for t in (B, C))  # (H, 1, N)
        dt = F.softplus(dt.float() + m.dt_bias.float())  # (H,)
        h = state[0]  # (H, P, N)
        h.mul_(torch.exp(dt * self.A)[:, None, None]).add_((dt[:, None] * xs)[:, :, None] * B)
        y = (h @ C.transpose(1, 2))[:, :, 0] + m.D.float()[:, None] * xs  # (H, P)
        y = gated_rms_norm(y.reshape(-1).to(x.dtype), z, m.norm.weight, m.norm.group, m.norm.eps)
        return affine(m.out_proj.weight, m.out_proj.bias, y)


# ----------------------------------------------------------------------------- a layer whose mixer is not attention


class MixerLayer(nn.Module):
    """x + mixer(input_layernorm(x)), then, with an MLP, x + mlp(post_attention_layernorm(x)): the layer of the
    mamba2 and short_conv blocks, its mixer under the name transformers gives it (mamba, conv)."""

    def __init__(self, d_model: int, name: str, mixer: nn.Module, block, dropout: float):
        super().__init__()
        self.input_layernorm = make_norm(block.norm, d_model)
        self.add_module(name, mixer)
        self.mixer_name = name
        if block.mlp is not None:
            self.post_attention_layernorm = make_norm(block.norm, d_model)
            self.mlp = MLP(d_model, block.mlp)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        mixer = getattr(self, self.mixer_name)
        return mixer_then_mlp(x, lambda h: mixer(h, ctx), self.input_layernorm, getattr(self, "mlp", None),
                              getattr(self, "post_attention_layernorm", None), self.drop)

    def step(self, decoding):
        """The same on one token (C,): the mixer's step continues from the state the prompt's forward left."""
        mix, n1 = getattr(self, self.mixer_name).step(decoding), norm_step(self.input_layernorm)
        mlp = self.mlp.step(decoding) if hasattr(self, "mlp") else None
        n2 = norm_step(self.post_attention_layernorm) if mlp else None
        return lambda x, pos: mixer_then_mlp(x, mix, n1, mlp, n2, unchanged)


def mixer_then_mlp(x, mix, norm1, mlp, norm2, drop):
    x = x + drop(mix(norm1(x)))
    return x if mlp is None else x + drop(mlp(norm2(x)))


def layer_tensors(block, spec, first_layer: int, name: str, mixer_tensors) -> list:
    """A MixerLayer block's weights: its norms, `mixer_tensors(prefix)` under `name`, its MLP, per repeat."""
    out = []
    for r in range(block.repeat):
        p = f"model.layers.{first_layer + r}"
        out += norm_tensors(f"{p}.input_layernorm", block.norm, spec.d_model) + mixer_tensors(f"{p}.{name}")
        if block.mlp is not None:
            out += norm_tensors(f"{p}.post_attention_layernorm", block.norm, spec.d_model) + \
                mlp_tensors(f"{p}.mlp", spec, block.mlp)
    return out


def layer_costs(block, spec, acc, mixer_costs) -> None:
    """A MixerLayer block's costs: its norms, `mixer_costs(acc)`, its MLP, per repeat."""
    for _ in range(block.repeat):
        acc.act += norm_act(block.norm, spec.d_model) + acc.dropout_mask
        mixer_costs(acc)
        if block.mlp is not None:
            acc.act += norm_act(block.norm, spec.d_model) + acc.dropout_mask
            mlp_costs(spec, block.mlp, acc)


# ----------------------------------------------------------------------------- the block's hooks


def check(block: Spec, spec, at: str) -> list[Problem]:
    m, problems = block.mamba, []
    inner = m.inner(spec.d_model)
    if inner % m.head_dim:
        problems.append(Problem(join(at, "mamba.head_dim"), f"must divide the inner width expand × d_model = {inner}; "
                                f"use one of {', '.join(str(d) for d in range(1, 129) if inner % d == 0)}"))
    elif m.heads(spec.d_model) % m.n_groups:
        problems.append(Problem(join(at, "mamba.n_groups"), f"must divide the {m.heads(spec.d_model)} heads"))
    return problems + norm_problems(block.norm, at)


def plan(block: Spec) -> list:
    return [(None, None)] * block.repeat


def build(block: Spec, spec, build) -> list[nn.Module]:
    return [MixerLayer(spec.d_model, "mamba", Mamba2Mixer(spec.d_model, block.mamba, block.norm.eps,
                                                          build.next_state_slot()), block, spec.dropout)
            for _ in range(block.repeat)]


def forward(layer: MixerLayer, x: torch.Tensor, ctx) -> torch.Tensor:
    return layer.forward(x, ctx)


def step(layer: MixerLayer, decoding):
    return layer.step(decoding)


def mamba_tensors(prefix: str, spec, m: Mamba2Spec) -> list[tuple[str, tuple[int, ...]]]:
    C, inner, H, D = spec.d_model, m.inner(spec.d_model), m.heads(spec.d_model), m.conv_dim(spec.d_model)
    out = [(f"{prefix}.in_proj.weight", (inner + D + H, C))] + \
        ([(f"{prefix}.in_proj.bias", (inner + D + H,))] if m.proj_bias else [])
    out += [(f"{prefix}.conv1d.weight", (D, 1, m.conv_kernel))] + \
        ([(f"{prefix}.conv1d.bias", (D,))] if m.conv_bias else [])
    out += [(f"{prefix}.dt_bias", (H,)), (f"{prefix}.A_log", (H,)), (f"{prefix}.D", (H,)),
            (f"{prefix}.norm.weight", (inner,)), (f"{prefix}.out_proj.weight", (C, inner))]
    return out + ([(f"{prefix}.out_proj.bias", (C,))] if m.proj_bias else [])


def tensors(block: Spec, spec, first_layer: int) -> list:
    return layer_tensors(block, spec, first_layer, "mamba", lambda prefix: mamba_tensors(prefix, spec, block.mamba))


def mamba_costs(spec, m: Mamba2Spec, acc) -> None:
    """Projections and convolution; the scan: the (Q, Q) products inside a chunk (each token meets Q/2 others on
    average) and the state's update and read; the fixed-size state (convolution window + scan state) per sequence."""
    C, inner, H, N, D = spec.d_model, m.inner(spec.d_model), m.heads(spec.d_model), m.d_state, m.conv_dim(spec.d_model)
    Q = min(m.chunk_size, acc.seq_len)
    acc.matmul += C * (inner + D + H) + inner * C + D * m.conv_kernel
    acc.attn_flops += 2 * H * (Q / 2) * (N + m.head_dim) + 2 * 2 * inner * N
    # in_proj output, convolution input and output, x; B and C per head with their decayed copies and the
    # einsums' own copies (8·H·N, measured), the chunk's scores and decays (2·H·Q), y, the gated norm
    acc.act += (inner + D + H) + 2 * D + inner + 8 * H * N + 2 * H * Q + 4 * inner
    acc.state_bytes += (H * m.head_dim * N + D * (m.conv_kernel - 1)) * acc.nbytes


def costs(block: Spec, spec, acc) -> None:
    layer_costs(block, spec, acc, lambda a: mamba_costs(spec, block.mamba, a))


def shapes(block: Spec, spec) -> list[tuple[str, str]]:
    m = block.mamba
    H, P, N = m.heads(spec.d_model), m.head_dim, m.d_state
    out = [("residual stream in and out", f"(B, T, {spec.d_model})"),
           ("scan input x (per head)", f"(B, T, {H}, {P})"), ("B and C", f"(B, T, {m.n_groups}, {N}) each"),
           ("state carried from token to token", f"(B, {H}, {P}, {N}), the same size at any length")]
    return out + ([("MLP hidden", f"(B, T, {block.mlp.hidden_size(spec.d_model)})")] if block.mlp else [])


def mamba_words(spec, m: Mamba2Spec) -> str:
    return f"Mamba2 {m.heads(spec.d_model)} heads × {m.head_dim}, state {m.d_state}, conv {m.conv_kernel}"


def describe(block: Spec, spec) -> tuple[str, str]:
    name = f"mamba2×{block.repeat}" if block.repeat > 1 else "mamba2"
    mlp = f", {mlp_words(spec, block.mlp)}" if block.mlp else ""
    return name, f"{mamba_words(spec, block.mamba)}{mlp}, pre-{block.norm.kind}"


# ----------------------------------------------------------------------------- export and pruning


def settings(block: Spec) -> tuple:
    """What must be equal across layers for one native class to hold them all."""
    return (block.mamba, block.norm, block.mlp)


def native(block: Spec, spec) -> dict:
    """Its layers for the family rules (sharing/native.py): transformers' Mamba2 (no MLP) or Bamba (with one), and
    their names for ours (module prefixes; Mamba2 keeps its layers under backbone.layers)."""
    return {"layers": [block] * block.repeat,
            "names": {"mamba2": {"model.layers": ("backbone.layers", False)}},
            "layer_names": {"mamba2": {"input_layernorm": ("norm", False), "mamba": ("mixer", False)},
                            "bamba": BAMBA_NAMES}}


def gguf(block: Spec, spec) -> dict:
    names = {"mamba.in_proj": "ssm_in", "mamba.conv1d": "ssm_conv1d", "mamba.dt_bias": "ssm_dt",
             "mamba.A_log": "ssm_a", "mamba.D": "ssm_d", "mamba.norm": "ssm_norm", "mamba.out_proj": "ssm_out",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    return {"layer_names": {"*": names}, "layers": block.repeat}


prune = "a Mamba2 layer is kept whole: its heads, state and convolution channels are tied together by one input " \
        "projection, and pruning them needs care this tool does not take yet"
