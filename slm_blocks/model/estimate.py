"""Size, compute and memory of a spec, counted from the spec alone (nothing is allocated).

The builder shows these live while a learner edits blocks, and the app refuses oversized models with
them before touching memory. Parameter counts are exact; FLOPs count multiply-adds as 2 FLOPs; memory
is an estimate whose formula is spelled out below so a learner can redo it by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .spec import (
    AttentionLayerBlock, AttentionSpec, FinalNormBlock, MLPLayerBlock, ModelSpec, NormBlock, NormSpec, TransformerBlock,
)

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Estimate:
    params: int  # unique trainable parameters (tied embeddings counted once)
    embedding_params: int  # token (+ learned position) embeddings
    flops_per_token_forward: int
    flops_per_token_train: int  # forward + backward = 3 x forward
    train_weights_bytes: int
    train_grads_bytes: int
    train_optimizer_bytes: int  # AdamW: two fp32 moments per parameter
    train_activations_bytes: int  # for one batch of batch_size x seq_len
    train_total_bytes: int
    kv_cache_bytes_per_token: int  # per sequence, all attention layers
    inference_bytes: int  # weights + a full KV cache for batch_size x seq_len

    def to_dict(self) -> dict:
        return asdict(self)


def _norm_params(norm: NormSpec | None, dim: int) -> int:
    if norm is None:
        return 0
    return dim * (2 if norm.kind == "layernorm" and norm.bias else 1)


def _attn_params(C: int, spec: ModelSpec, a: AttentionSpec) -> int:
    hd, nh, nkv = a.head_size(spec.d_model), a.n_heads, a.kv_heads()
    qkv = C * (nh + 2 * nkv) * hd + ((nh + 2 * nkv) * hd if a.qkv_bias else 0)
    out = nh * hd * C + (C if a.out_bias else 0)
    return qkv + out + (2 * hd if a.qk_norm else 0)


def _mlp_params(C: int, m) -> int:
    H = m.hidden_size(C)
    n_in = 2 if m.gated else 1
    return n_in * C * H + H * C + ((n_in * H + C) if m.bias else 0)


def _attended(seq_len: int, window: int | None) -> float:
    """Average number of keys a query attends to over positions 1..seq_len (causal, optionally windowed)."""
    w = min(window or seq_len, seq_len)
    # sum of min(t, w) for t = 1..seq_len in closed form: 1 + ... + w, then w for each later position
    # (a loop here took seconds for a spec with a long context and many layers, on every keystroke)
    return (w * (w + 1) // 2 + (seq_len - w) * w) / seq_len


def estimate(spec: ModelSpec, batch_size: int = 8, seq_len: int | None = None, dtype: str = "float32") -> Estimate:
    C, V = spec.d_model, spec.vocab_size
    T = seq_len or spec.max_seq_len
    nbytes = BYTES[dtype]
    embedding = V * C + (spec.max_seq_len * C if spec.positional() == "learned" else 0)
    params = embedding + (0 if spec.tie_embeddings else V * C)
    matmul = V * C  # the LM head multiplies even when tied
    attn_flops = 0.0
    act = 0  # activation elements stored per token for backward
    kv_per_token = 0
    for block, a, window in spec.layer_plan():
        if isinstance(block, TransformerBlock):
            n_norms = 4 if block.norm_placement == "sandwich" else 2
            params += n_norms * _norm_params(block.norm, C)
            act += n_norms * C
        elif isinstance(block, (AttentionLayerBlock, MLPLayerBlock)):
            params += _norm_params(block.norm, C)
            act += C if block.norm else 0
        elif isinstance(block, NormBlock):
            params += _norm_params(block.norm, C)
            act += C
        if a is not None:
            hd, nh, nkv = a.head_size(spec.d_model), a.n_heads, a.kv_heads()
            p = _attn_params(C, spec, a)
            params += p
            matmul += C * (nh + 2 * nkv) * hd + nh * hd * C
            attn_flops += 2 * 2 * nh * hd * _attended(T, window)  # q·k scores and probs·v
            act += C + (nh + 2 * nkv) * hd + nh * hd + nh  # qkv input, q/k/v, attention output, logsumexp
            kv_per_token += 2 * nkv * hd * nbytes
        if isinstance(block, (TransformerBlock, MLPLayerBlock)):
            m, H = block.mlp, block.mlp.hidden_size(C)
            params += _mlp_params(C, m)
            matmul += (3 if m.gated else 2) * C * H
            act += C + (3 if m.gated else 2) * H  # MLP input, hidden pre-activations (and gate), activations
    final = next((b for b in spec.blocks if isinstance(b, FinalNormBlock)), None)
    if final:
        params += _norm_params(final.norm, C)
        act += C
    act += C + 2 * V  # embedding output, logits and their softmax

    fwd = int(round(2 * matmul + attn_flops))
    weights = params * nbytes
    activations = act * batch_size * T * nbytes
    return Estimate(
        params=params,
        embedding_params=embedding,
        flops_per_token_forward=fwd,
        flops_per_token_train=3 * fwd,
        train_weights_bytes=weights,
        train_grads_bytes=weights,
        train_optimizer_bytes=params * 4 * 2,
        train_activations_bytes=activations,
        train_total_bytes=2 * weights + params * 8 + activations,
        kv_cache_bytes_per_token=kv_per_token,
        inference_bytes=weights + kv_per_token * batch_size * T,
    )


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (with unit 'B': '1.18 MiB')."""
    if unit == "B":
        for u in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(n) < 1024 or u == "TiB":
                return f"{n:.0f} {u}" if u == "B" else f"{n:.2f} {u}"
            n /= 1024
    for u in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or u == "P":
            return f"{n:.3g}{u}{unit}"
        n /= 1000
    return str(n)
