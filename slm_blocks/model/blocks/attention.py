"""The attention block: one causal self-attention layer with a residual connection, `x + attn(norm(x))`, for free
layer orders; and the attention itself (settings, module, one-token step), which the transformer block uses too.

Attention covers MHA / GQA / MQA, optional QK-norm, RoPE or ALiBi (blocks/positional.py), a sliding window and a
KV cache. Its forward works on (B, T, C) with one fused SDPA call; its step works on one token at batch 1, where
the time goes to dispatching ops rather than arithmetic: the q/k/v weights are stacked once per generation with
1/sqrt(head_dim) folded into the q rows, and each query head is two matrix-vector products over the filled (or
windowed) part of its kv head's cache, none of which starts the thread pool (a batched matmul or a 2-D softmax
does, even for 4 heads, and on busy shared cores that cost 5-10x the arithmetic). Both read the same weights;
tests/model/test_decode.py checks that their logits agree for every variant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..assembly import affine, unchanged
from ..fields import Problem, join, setting
from .norm import NormSpec, RMSNorm, make_norm, norm_act, norm_problems, norm_step, norm_tensors, rms_norm
from .positional import alibi_slopes, alibi_step_table, apply_rope, rope_step_tables

TYPE = "attention"
ROLE = "layer"
BRANCHES = 1


@dataclass
class AttentionSpec:
    """Causal self-attention. n_kv_heads < n_heads gives GQA; n_kv_heads = 1 gives MQA."""

    WHAT: ClassVar[str] = "attention settings"
    n_heads: int = setting(4, lo=1, hi=1024, label="Heads", help="number of query heads")
    n_kv_heads: int | None = setting(None, lo=1, hi=1024, label="KV heads", empty="same as heads",
                                     help="key/value heads; fewer than heads = GQA, 1 = MQA (empty: same as heads)")
    head_dim: int | None = setting(None, lo=1, hi=4096, label="Head size", empty="d_model / heads",
                                   help="size of each head (empty: d_model / heads)")
    qkv_bias: bool = setting(False, label="q/k/v bias", help="bias on the q, k and v projections")
    out_bias: bool = setting(False, label="Output bias", help="bias on the output projection")
    qk_norm: bool = setting(False, label="QK-norm",
                            help="RMSNorm each query and key head before attention (Qwen3, Gemma 3)")
    sliding_window: int | None = setting(None, lo=1, hi=1 << 20, label="Sliding window", empty="all tokens",
                                         help="attend only to the last N tokens (empty: all tokens)")
    dropout: float = setting(0.0, lo=0.0, label="Attention dropout",
                             help="dropout on attention probabilities while training")

    # --- the sizes an empty field stands for (resolved here, once, for the model, estimate and export)
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_heads, or one per query head when empty (plain multi-head attention)."""
        return self.n_kv_heads or self.n_heads

    def head_size(self, d_model: int) -> int:
        """Size of each head: head_dim, or d_model / n_heads when empty."""
        return self.head_dim or d_model // self.n_heads


@dataclass
class Spec:
    """One standalone attention layer with a residual connection, for free layer orders."""

    type: Literal["attention"] = "attention"
    attention: AttentionSpec = setting(factory=AttentionSpec)
    norm: NormSpec | None = setting(factory=NormSpec, help="norm before the layer (absent: no norm)")


# ----------------------------------------------------------------------------- masks


@dataclass
class AttentionContext:
    """What every attention layer of one forward pass shares: the cache, padding, RoPE tables, mask memo."""

    key_padding: torch.Tensor | None  # (B, S) bool, True = real token, over cached + new positions
    cache: object | None = None  # a transformers Cache, or None
    rope: dict = field(default_factory=dict)  # (theta, head_dim) -> (cos, sin), each (B, T, hd)
    masks: dict = field(default_factory=dict)  # memo of attention_mask() results
    attentions: list | None = None  # explain mode: each attention layer appends its (B, nh, T, S) probabilities
    router: list | None = None  # training: each mixture-of-experts layer appends (router logits, k, coef)


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


# ----------------------------------------------------------------------------- the attention module


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

    @classmethod
    def built(cls, d_model: int, spec: AttentionSpec, norm: NormSpec | None, window: int | None, build) -> "Attention":
        """The attention of one layer: its RoPE base and ALiBi from the positional block, the next cache slot."""
        theta = build.positional.theta_for(window)
        attn = cls(d_model, spec, norm_eps=norm.eps if norm is not None else 1e-6, window=window, rope_theta=theta,
                   alibi=build.positional.kind == "alibi", cache_index=build.next_cache_slot())
        if theta is not None:
            build.rope_keys.add((theta, attn.head_dim))
        return attn

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

    def step(self, decoding):
        """This attention for one new token at position `pos`: (C,) -> (C,), its keys and values written into
        the generation's cache (see the module docstring)."""
        return _AttentionStep(self, decoding)


class _AttentionStep:
    def __init__(self, attn: Attention, decoding):
        nh, nkv, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
        self.nh, self.nkv, self.hd, self.group = nh, nkv, hd, nh // nkv
        projs = (attn.q_proj, attn.k_proj, attn.v_proj)
        self.w = torch.cat([p.weight for p in projs])  # (nh*hd + 2*nkv*hd, C), stacked once
        self.b = None if attn.q_proj.bias is None else torch.cat([p.bias for p in projs])
        self.wo, self.bo = attn.o_proj.weight, attn.o_proj.bias
        self.qk = attn.qk_norm or attn.rope_theta is not None  # q and k are transformed after the projection
        self.qk_norm = None
        scale = hd ** -0.5  # the attention's 1/sqrt(hd), folded into q once: q·k/sqrt(hd) = (q/sqrt(hd))·k
        if attn.qk_norm:  # q_norm and k_norm as one RMSNorm over the (nh + nkv, hd) rows of q and k
            weight = torch.cat([attn.q_norm.weight.expand(nh, hd) * scale, attn.k_norm.weight.expand(nkv, hd)])
            self.qk_norm = (weight, attn.q_norm.eps)  # both norms are built with the same eps
        else:  # (RoPE is linear, so scaling before it is scaling after it)
            self.w[: nh * hd] *= scale
            if self.b is not None:
                self.b[: nh * hd] *= scale
        self.split = [hd] * nh + [2 * nkv * hd]  # the projection as nh query heads and the keys + values
        self.rope = None if attn.rope_theta is None else rope_step_tables(decoding, attn.rope_theta, hd)
        self.alibi = alibi_step_table(decoding, nh) if attn.alibi else None
        self.window = attn.window
        kv = decoding.cache.kv[attn.cache_index]
        self.kv = kv[:, 0]  # (2, nkv, max_len, hd): this layer's keys and values at batch 1
        self.k, self.v = self.kv[0], self.kv[1]  # (nkv, max_len, hd) each
        self.vt = self.v.transpose(1, 2)  # (nkv, hd, max_len)
        self.max_len = kv.shape[3]

    def __call__(self, x: torch.Tensor, pos: int) -> torch.Tensor:  # (C,) -> (C,)
        nh, nkv, hd = self.nh, self.nkv, self.hd
        qkv = affine(self.w, self.b, x)  # (nh*hd + 2*nkv*hd,)
        if self.qk:
            qk = qkv[: (nh + nkv) * hd].view(nh + nkv, hd)
            if self.qk_norm is not None:
                qk = rms_norm(qk, *self.qk_norm)
            if self.rope is not None:  # x·cos + rotate_half(x)·sin, with rotate_half = roll by hd/2, signs in sin
                cos, sin = self.rope
                qk = qk * cos[pos] + qk.roll(hd // 2, -1) * sin[pos]
            q = qk.unbind(0)[:nh]  # nh x (hd,)
            self.k.select(1, pos).copy_(qk[nh:])  # into the cache: (nkv, hd) at position pos
            self.v.select(1, pos).copy_(qkv[(nh + nkv) * hd:].view(nkv, hd))
        else:  # keys and values straight from the projection, into the cache in one copy
            *q, kv = qkv.split_with_sizes(self.split)
            self.kv.select(2, pos).copy_(kv.view(2, nkv, hd))
        start = 0 if self.window is None else max(0, pos + 1 - self.window)  # the window's first key
        n = pos + 1 - start
        keys = self.k.narrow(1, start, n).unbind(0)  # nkv x (n, hd)
        values = self.vt.narrow(2, start, n).unbind(0)  # nkv x (hd, n)
        bias = None if self.alibi is None else self.alibi.narrow(1, self.max_len - 1 - pos + start, n).unbind(0)
        heads = []
        for h, qh in enumerate(q):  # query head h reads kv head h // g
            scores = torch.mv(keys[h // self.group], qh)  # (n,)
            if bias is not None:  # ALiBi: -slope·distance, distances pos-start .. 0
                scores = scores + bias[h]
            heads.append(torch.mv(values[h // self.group], scores.softmax(0)))  # (hd,)
        y = torch.cat(heads)  # (nh*hd,)
        return affine(self.wo, self.bo, y)  # (C,)


# ----------------------------------------------------------------------------- what an attention adds up to


def attention_problems(spec, a: AttentionSpec, at: str) -> list[Problem]:
    """The checks of one attention's settings against the spec's sizes and positions."""
    problems = []
    add = lambda field, msg: problems.append(Problem(join(at, f"attention.{field}"), msg))  # noqa: E731
    heads_fit = a.head_dim is not None or spec.d_model % a.n_heads == 0
    if not heads_fit:
        divisors = [h for h in range(1, min(spec.d_model, 64) + 1) if spec.d_model % h == 0]
        add("n_heads", f"d_model {spec.d_model} is not divisible by n_heads {a.n_heads}; use one of "
            f"{', '.join(map(str, divisors[:10]))} or set attention.head_dim")
    kv = a.kv_heads()
    if a.n_heads % kv:
        add("n_kv_heads", f"n_heads {a.n_heads} is not divisible by n_kv_heads {kv}; use a divisor "
            f"of {a.n_heads} (1 = MQA, {a.n_heads} = MHA)")
    if spec.positional() == "rope" and heads_fit and a.head_size(spec.d_model) % 2:
        add("head_dim", f"head_dim {a.head_size(spec.d_model)} is odd but RoPE rotates pairs of dimensions; "
            "use an even head_dim (or change n_heads)")
    if a.sliding_window is not None and a.sliding_window > spec.max_seq_len:
        add("sliding_window", f"window {a.sliding_window} is larger than max_seq_len "
            f"{spec.max_seq_len}; use at most {spec.max_seq_len} (or leave it empty for full attention)")
    if a.dropout >= 1:
        add("dropout", f"is {a.dropout}; use a value in [0, 1), e.g. 0.1")
    return problems


def attention_tensors(prefix: str, spec, a: AttentionSpec) -> list[tuple[str, tuple[int, ...]]]:
    C = spec.d_model
    hd, nh, nkv = a.head_size(C), a.n_heads, a.kv_heads()
    out = []
    for name, rows in (("q_proj", nh * hd), ("k_proj", nkv * hd), ("v_proj", nkv * hd)):
        out.append((f"{prefix}.{name}.weight", (rows, C)))
        if a.qkv_bias:
            out.append((f"{prefix}.{name}.bias", (rows,)))
    out.append((f"{prefix}.o_proj.weight", (C, nh * hd)))
    if a.out_bias:
        out.append((f"{prefix}.o_proj.bias", (C,)))
    if a.qk_norm:
        out += [(f"{prefix}.q_norm.weight", (hd,)), (f"{prefix}.k_norm.weight", (hd,))]
    return out


def attended(seq_len: int, window: int | None) -> float:
    """Average number of keys a query attends to over positions 1..seq_len (causal, optionally windowed)."""
    w = min(window or seq_len, seq_len)
    # sum of min(t, w) for t = 1..seq_len in closed form: 1 + ... + w, then w for each later position
    # (a loop here took seconds for a spec with a long context and many layers, on every keystroke)
    return (w * (w + 1) // 2 + (seq_len - w) * w) / seq_len


def attention_costs(spec, a: AttentionSpec, window: int | None, acc) -> None:
    """One attention layer's projections, scores, kept activations and KV cache."""
    C = spec.d_model
    hd, nh, nkv = a.head_size(C), a.n_heads, a.kv_heads()
    acc.matmul += C * (nh + 2 * nkv) * hd + nh * hd * C
    acc.attn_flops += 2 * 2 * nh * hd * attended(acc.seq_len, window)  # q·k scores and probs·v
    # q/k/v input and output, RoPE's rotated q and k, QK-norm's, attention output, logsumexp
    acc.act += C + (nh + 2 * nkv) * hd + ((nh + nkv) * hd if spec.positional() == "rope" else 0) + \
        (2 * (nh + nkv) * hd if a.qk_norm else 0) + nh * hd + nh
    acc.kv_bytes += 2 * nkv * hd * acc.nbytes


def attention_shapes(spec, a: AttentionSpec) -> list[tuple[str, str]]:
    hd, nh, nkv = a.head_size(spec.d_model), a.n_heads, a.kv_heads()
    window = f" (each query sees at most {a.sliding_window} keys)" if a.sliding_window else ""
    return [("queries", f"(B, {nh}, T, {hd})"), ("keys, values", f"(B, {nkv}, T, {hd}) each"),
            ("attention scores", f"(B, {nh}, T, T){window}")]


def attention_words(spec, a: AttentionSpec) -> str:
    kv = f", {a.n_kv_heads} kv" if a.n_kv_heads and a.n_kv_heads != a.n_heads else ""
    return f"{a.n_heads} heads × {a.head_size(spec.d_model)}{kv}" + \
        (f", window {a.sliding_window}" if a.sliding_window else "")


# ----------------------------------------------------------------------------- the block's hooks


def check(block: Spec, spec, at: str) -> list[Problem]:
    return attention_problems(spec, block.attention, at) + norm_problems(block.norm, at)


def plan(block: Spec) -> list:
    return [(block.attention, block.attention.sliding_window)]


def residual(x, ctx, attn, norm, drop):
    """x + attn(norm(x)): the layer's computation, for the forward (ctx) and the one-token step (ctx = pos)."""
    return x + drop(attn(norm(x), ctx))


class AttentionLayer(nn.Module):
    def __init__(self, d_model: int, block: Spec, attn: Attention, dropout: float):
        super().__init__()
        self.input_layernorm = make_norm(block.norm, d_model) if block.norm else nn.Identity()
        self.self_attn = attn
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return forward(self, x, ctx)

    def step(self, decoding):
        return step(self, decoding)


def build(block: Spec, spec, build) -> list[nn.Module]:
    attn = Attention.built(spec.d_model, block.attention, block.norm, block.attention.sliding_window, build)
    return [AttentionLayer(spec.d_model, block, attn, spec.dropout)]


def forward(layer: AttentionLayer, x: torch.Tensor, ctx) -> torch.Tensor:
    return residual(x, ctx, layer.self_attn, layer.input_layernorm, layer.drop)


def step(layer: AttentionLayer, decoding):
    attn, norm = layer.self_attn.step(decoding), norm_step(layer.input_layernorm)
    return lambda x, pos: residual(x, pos, attn, norm, unchanged)


def tensors(block: Spec, spec, first_layer: int) -> list:
    p = f"model.layers.{first_layer}"
    return norm_tensors(f"{p}.input_layernorm", block.norm, spec.d_model) + \
        attention_tensors(f"{p}.self_attn", spec, block.attention)


def costs(block: Spec, spec, acc) -> None:
    acc.act += norm_act(block.norm, spec.d_model) + acc.dropout_mask
    attention_costs(spec, block.attention, block.attention.sliding_window, acc)


def shapes(block: Spec, spec) -> list[tuple[str, str]]:
    return [("residual stream in and out", f"(B, T, {spec.d_model})")] + attention_shapes(spec, block.attention)


def describe(block: Spec, spec) -> tuple[str, str]:
    return "attention", attention_words(spec, block.attention)


native = "a standalone attention layer has no native transformers class (a free layer order)"
gguf = "llama.cpp has no architecture with standalone attention layers (a free layer order)"


def prune(block: Spec, spec=None) -> dict:
    return {"droppable": True, "attention": block.attention, "mlp": None,
            "shrink": lambda raw, dropped: None if dropped else raw}
