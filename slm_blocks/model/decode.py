"""One new token through the model at batch 1: the decode step of `stream_tokens`.

At the sizes this app trains (tiny-char: 4 layers, d_model 128) a decode step is ~100 tiny ops, and the time
goes to dispatching them, not to arithmetic: the module forward spends most of a token on work one token does
not need (module calls, a q/k/v weight concatenation per layer, (1, 1, C) matrix products, RoPE tables and
masks rebuilt per call, an attention kernel that starts the thread pool for 1 query). This step computes the
same function with cheaper ops:

- q/k/v weights stacked once per `Decoder` (one generation), with the attention's 1/sqrt(head_dim) folded into
  the q rows, so a step does one matrix-vector product for them; a Decoder reads the parameters when it is built
  and is dropped with its generation, so no copy outlives a training step (nothing is stored on the model);
- the hidden state is a vector (C,): `addmv`/`mv` instead of `linear` on (1, 1, C);
- attention is, per query head, scores = keys · q, softmax, values · p (two matrix-vector products) over the
  filled, or sliding-window, part of its kv head's cache (GQA without repeating keys): no mask, since a token
  sees every cached position before it. More ops than one batched matmul, but none of them starts the thread
  pool (`bmm` and a 2-D `softmax` do, even for 4 heads), which at batch 1 on busy shared cores cost 5-10x more
  than the arithmetic;
- RoPE, ALiBi and sinusoidal tables are computed once for every position; a step only slices them.

`tests/model/test_decode.py` checks that its logits equal the module forward's after the same prefix, for every
preset and every positional / attention / norm-placement variant; `Decoder.unsupported` names what it does not
cover (dropout in training mode, quantized or wrapped projections), and `stream_tokens` then uses the forward.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .layers import AttentionLayer, MLPLayer, NORM_NAMES, NormLayer, TransformerLayer, _unchanged
from .mlp import MLP
from .positions import alibi_slopes, rope_tables, sinusoidal


def _affine(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """weight @ x + bias for a vector x: one op (F.linear on a vector is a matmul plus a separate add)."""
    return torch.mv(weight, x) if bias is None else torch.addmv(bias, weight, x)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm.forward with a weight per row: (n, hd) -> (n, hd)."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _norm(module: nn.Module):
    """The norm's own forward (skipping nn.Module.__call__): it works on a vector as on (B, T, C)."""
    return _unchanged if isinstance(module, nn.Identity) else module.forward


class _AttentionStep:
    """Attention of one new token at position `pos` against the cache of its layer."""

    def __init__(self, attn: Attention, kv: torch.Tensor, tables: dict):
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
        self.rope = None if attn.rope_theta is None else tables["rope", attn.rope_theta, hd]
        self.alibi = tables["alibi", nh] if attn.alibi else None
        self.window = attn.window
        self.kv = kv[:, 0]  # (2, nkv, max_len, hd): this layer's keys and values at batch 1
        self.k, self.v = self.kv[0], self.kv[1]  # (nkv, max_len, hd) each
        self.vt = self.v.transpose(1, 2)  # (nkv, hd, max_len)
        self.max_len = kv.shape[3]

    def __call__(self, x: torch.Tensor, pos: int) -> torch.Tensor:  # (C,) -> (C,)
        nh, nkv, hd = self.nh, self.nkv, self.hd
        qkv = _affine(self.w, self.b, x)  # (nh*hd + 2*nkv*hd,)
        if self.qk:
            qk = qkv[: (nh + nkv) * hd].view(nh + nkv, hd)
            if self.qk_norm is not None:
                qk = _rms_norm(qk, *self.qk_norm)
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
        return _affine(self.wo, self.bo, y)  # (C,)


class _MLPStep:
    def __init__(self, mlp: MLP):
        self.gated, self.act = mlp.gated, mlp.act
        if mlp.gated:
            self.wg, self.bg = mlp.gate_proj.weight, mlp.gate_proj.bias
        self.wu, self.bu = mlp.up_proj.weight, mlp.up_proj.bias
        self.wd, self.bd = mlp.down_proj.weight, mlp.down_proj.bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (C,) -> (C,)
        if self.gated:
            h = self.act(_affine(self.wg, self.bg, x)) * _affine(self.wu, self.bu, x)  # (H,)
        else:
            h = self.act(_affine(self.wu, self.bu, x))
        return _affine(self.wd, self.bd, h)


class _LayerStep:
    """TransformerLayer / AttentionLayer / MLPLayer / NormLayer.forward on a vector, same order of operations."""

    def __init__(self, layer: nn.Module, cache, tables: dict):
        self.kind = type(layer).__name__
        attn = getattr(layer, "self_attn", None)
        self.attn = None if attn is None else _AttentionStep(attn, cache.kv[attn.cache_index], tables)
        self.mlp = _MLPStep(layer.mlp) if hasattr(layer, "mlp") else None
        if isinstance(layer, TransformerLayer):
            self.placement, self.parallel = layer.placement, layer.parallel
            self.norms = [_norm(getattr(layer, n)) if n else _unchanged for n in NORM_NAMES[layer.placement]]
        elif isinstance(layer, NormLayer):
            self.norms = [_norm(layer.norm)]
        else:
            self.norms = [_norm(layer.input_layernorm)]

    def __call__(self, x: torch.Tensor, pos: int) -> torch.Tensor:  # (C,) -> (C,)
        if self.kind == "TransformerLayer":
            attn_in, attn_out, mlp_in, mlp_out = self.norms
            if self.placement == "classic_post":
                x = attn_out(x + self.attn(x, pos))
                return mlp_out(x + self.mlp(x))
            a = attn_out(self.attn(attn_in(x), pos))
            if self.parallel:
                return x + (a + mlp_out(self.mlp(mlp_in(x))))
            x = x + a
            return x + mlp_out(self.mlp(mlp_in(x)))
        if self.kind == "AttentionLayer":
            return x + self.attn(self.norms[0](x), pos)
        if self.kind == "MLPLayer":
            return x + self.mlp(self.norms[0](x))
        return self.norms[0](x)  # NormLayer


class Decoder:
    """`decoder(token, pos)` -> float logits (V,) of the token after `token` (a 0-d id tensor) placed at `pos`,
    its keys/values written into `cache` (a generation.StaticCache at batch 1, filled up to `pos`).

    Build it inside inference mode, once per generation: it copies the q/k/v weights as they are now."""

    def __init__(self, model, cache):
        why = self.unsupported(model)
        if why:
            raise ValueError(f"the decode step does not cover this model: {why}")
        m = model.model
        p = m.embed_tokens.weight
        positions = torch.arange(cache.max_len, device=p.device)[None]  # (1, max_len)
        tables = {}
        for a in (x for x in m.modules() if isinstance(x, Attention)):
            if a.rope_theta is not None and ("rope", a.rope_theta, a.head_dim) not in tables:
                cos, sin = rope_tables(positions, a.head_dim, a.rope_theta)  # (1, max_len, hd), as the forward
                half = a.head_dim // 2
                sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)  # sign of rotate_half folded in
                tables["rope", a.rope_theta, a.head_dim] = cos[0].to(p.dtype), sin.to(p.dtype)
            if a.alibi and ("alibi", a.n_heads) not in tables:  # column j: -slope · (max_len - 1 - j)
                dist = torch.arange(cache.max_len - 1, -1, -1, device=p.device)
                bias = -alibi_slopes(a.n_heads).to(device=p.device, dtype=torch.float32)[:, None] * dist
                tables["alibi", a.n_heads] = bias.to(p.dtype)  # (nh, max_len)
        self.embed = p
        self.embed_scale = None if m.embed_scale is None else torch.tensor(m.embed_scale, dtype=p.dtype)
        self.positions = None  # (max_len, C) added to the embedding, or None
        if m.positional == "learned":
            self.positions = m.embed_positions.weight
        elif m.positional == "sinusoidal":
            self.positions = sinusoidal(positions, p.shape[1])[0].to(p.dtype)
        self.layers = [_LayerStep(layer, cache, tables) for layer in m.layers]
        self.norm = _norm(m.norm)
        self.head = model.lm_head.weight  # (V, C)
        self.to_float = p.dtype != torch.float32
        self.cache, self.n_attn = cache, len(cache.lengths)

    @staticmethod
    def unsupported(model) -> str | None:
        """Why this model needs the module forward (None: the decode step computes it)."""
        for name, mod in model.named_modules():
            if mod.training and (isinstance(mod, nn.Dropout) and mod.p > 0
                                 or isinstance(mod, Attention) and mod.dropout > 0):
                return f"{name} has dropout and the model is in training mode"
            if isinstance(mod, (Attention, MLP)):
                for pname, child in mod.named_children():
                    if pname.endswith("_proj") and not (type(child) is nn.Linear
                                                        and type(child.weight) is nn.Parameter):
                        return f"{name}.{pname} is not a plain nn.Linear"
            if isinstance(mod, (nn.Linear, nn.Embedding)) and type(mod.weight) is not nn.Parameter:
                return f"{name}.weight is not a plain parameter (quantized?)"
            if mod._forward_hooks or mod._forward_pre_hooks:
                return f"{name or 'the model'} has forward hooks"
        layers = (TransformerLayer, AttentionLayer, MLPLayer, NormLayer)
        if not all(type(layer) in layers for layer in model.model.layers):
            return "a layer of an unknown kind"
        return None

    def __call__(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        x = torch.embedding(self.embed, token)  # (C,)
        if self.embed_scale is not None:
            x = x * self.embed_scale
        if self.positions is not None:
            x = x + self.positions[pos]
        for layer in self.layers:
            x = layer(x, pos)
        logits = torch.mv(self.head, self.norm(x))  # (V,)
        self.cache.lengths = [pos + 1] * self.n_attn
        return logits.float() if self.to_float else logits
