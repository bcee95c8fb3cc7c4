"""Size, compute and memory of a spec, counted from the spec alone (nothing is allocated).

The builder shows these live while a learner edits blocks, and the app refuses oversized models with
them before touching memory. Parameter counts are exact; FLOPs count multiply-adds as 2 FLOPs; memory
is an estimate whose formula is spelled out below so a learner can redo it by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .spec import (
    AttentionLayerBlock, AttentionSpec, EmbeddingBlock, FinalNormBlock, LMHeadBlock, MLPLayerBlock, ModelSpec, NormBlock,
    NormSpec, PositionalBlock, TransformerBlock,
)

from .memory import attention_memory

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Estimate:
    params: int  # unique trainable parameters (tied embeddings counted once)
    embedding_params: int  # token (+ learned position) embeddings
    flops_per_token_forward: int
    flops_per_token_train: int  # forward + backward = 3 x forward
    train_weights_bytes: int
    train_grads_bytes: int
    train_optimizer_bytes: int  # two fp32 moments per parameter (AdamW; an upper bound with Muon)
    train_activations_bytes: int  # peak for one batch of batch_size x seq_len, attention_bytes included
    train_total_bytes: int
    kv_cache_bytes_per_token: int  # per sequence, all attention layers
    inference_bytes: int  # weights + a full KV cache for batch_size x seq_len
    attention_bytes: int = 0  # of train_activations_bytes: what grows with seq_len² (masks, kept scores; memory.py)

    def to_dict(self) -> dict:
        return asdict(self)


def _norm_act(norm: NormSpec | None, dim: int) -> int:
    """Values per token a norm keeps for its backward: its input (RMSNorm also its normalised input)."""
    if norm is None:
        return 0
    return dim * (2 if norm.kind == "rmsnorm" else 1)


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
    # activation values kept per token for the backward pass (each term measured against torch's own peak in
    # tests/model/test_memory.py); dropout on the residual branches keeps a one-byte mask per value
    rope = spec.positional() == "rope"
    drop = C / 4 if spec.dropout > 0 else 0
    act = C + drop  # the embedding's output
    kv_per_token = 0
    for block, a, window in spec.layer_plan():
        if isinstance(block, TransformerBlock):
            n_norms = 4 if block.norm_placement == "sandwich" else 2
            params += n_norms * _norm_params(block.norm, C)
            act += n_norms * _norm_act(block.norm, C) + 2 * drop
        elif isinstance(block, (AttentionLayerBlock, MLPLayerBlock)):
            params += _norm_params(block.norm, C)
            act += _norm_act(block.norm, C) + drop
        elif isinstance(block, NormBlock):
            params += _norm_params(block.norm, C)
            act += _norm_act(block.norm, C)
        if a is not None:
            hd, nh, nkv = a.head_size(spec.d_model), a.n_heads, a.kv_heads()
            p = _attn_params(C, spec, a)
            params += p
            matmul += C * (nh + 2 * nkv) * hd + nh * hd * C
            attn_flops += 2 * 2 * nh * hd * _attended(T, window)  # q·k scores and probs·v
            # q/k/v input and output, RoPE's rotated q and k, QK-norm's, attention output, logsumexp
            act += C + (nh + 2 * nkv) * hd + ((nh + nkv) * hd if rope else 0) + \
                (2 * (nh + nkv) * hd if a.qk_norm else 0) + nh * hd + nh
            kv_per_token += 2 * nkv * hd * nbytes
        if isinstance(block, (TransformerBlock, MLPLayerBlock)):
            m, H = block.mlp, block.mlp.hidden_size(C)
            params += _mlp_params(C, m)
            matmul += (3 if m.gated else 2) * C * H
            act += C + (4 if m.gated else 2) * H  # MLP input; hidden pre-activations, activations (gate, product)
    final = next((b for b in spec.blocks if isinstance(b, FinalNormBlock)), None)
    if final:
        params += _norm_params(final.norm, C)
        act += _norm_act(final.norm, C)
    act += C + 4 * V  # the head's input; logits, their log-softmax, its gradient and the logits' gradient

    fwd = int(round(2 * matmul + attn_flops))
    weights = params * nbytes
    attention = attention_memory(spec, batch_size, T, "train", nbytes)
    activations = attention.peak(int(act * batch_size * T * nbytes))
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
        attention_bytes=activations - int(act * batch_size * T * nbytes),
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


# ----------------------------------------------------------------------------- per block (the Build diagram)


@dataclass
class BlockCost:
    """What one block of the spec holds: every weight tensor (named as in the built model, repeats expanded),
    the parameters it adds, and the shapes of the activations it reads and writes (B = batch, T = tokens)."""

    index: int
    type: str
    tensors: list[tuple[str, tuple[int, ...]]]
    params: int  # unique parameters this block adds (0 for an LM head tied to the embedding)
    shapes: list[tuple[str, str]]  # (what, shape) of its activations, e.g. ("attention scores", "(B, 4, T, T)")
    note: str = ""


def _norm_tensors(prefix: str, norm: NormSpec | None, C: int) -> list:
    if norm is None:
        return []
    return [(f"{prefix}.weight", (C,))] + ([(f"{prefix}.bias", (C,))] if norm.kind == "layernorm" and norm.bias else [])


def _attn_tensors(prefix: str, C: int, spec: ModelSpec, a: AttentionSpec) -> list:
    hd, nh, nkv = a.head_size(spec.d_model), a.n_heads, a.kv_heads()
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


def _mlp_tensors(prefix: str, C: int, m) -> list:
    H = m.hidden_size(C)
    out = []
    for name, shape in ((("gate_proj", (H, C)),) if m.gated else ()) + (("up_proj", (H, C)), ("down_proj", (C, H))):
        out.append((f"{prefix}.{name}.weight", shape))
        if m.bias:
            out.append((f"{prefix}.{name}.bias", (shape[0],)))
    return out


def _attn_shapes(spec: ModelSpec, a: AttentionSpec) -> list[tuple[str, str]]:
    hd, nh, nkv = a.head_size(spec.d_model), a.n_heads, a.kv_heads()
    window = f" (each query sees at most {a.sliding_window} keys)" if a.sliding_window else ""
    return [("queries", f"(B, {nh}, T, {hd})"), ("keys, values", f"(B, {nkv}, T, {hd}) each"),
            ("attention scores", f"(B, {nh}, T, T){window}")]


def block_costs(spec: ModelSpec) -> list[BlockCost]:
    """One BlockCost per block of a valid spec; their params add up to estimate(spec).params, and their tensors
    are exactly the model's named parameters (tests/model/test_estimate.py builds the model to check)."""
    from .layers import NORM_NAMES  # the norm slots of each placement, as the model names them

    C, V = spec.d_model, spec.vocab_size
    stream = ("residual stream in and out", f"(B, T, {C})")
    out, layer = [], 0
    for i, b in enumerate(spec.blocks):
        tensors, shapes, note = [], [stream], ""
        if isinstance(b, EmbeddingBlock):
            tensors = [("model.embed_tokens.weight", (V, C))]
            shapes = [("token ids in", "(B, T)"), ("vectors out", f"(B, T, {C})")]
            note = "scaled by √d_model" if b.scale else ""
        elif isinstance(b, PositionalBlock):
            if b.kind == "learned":
                tensors = [("model.embed_positions.weight", (spec.max_seq_len, C))]
                note = "one learned vector per position, added to the token vectors"
            else:
                note = {"rope": "no weights: rotates queries and keys by position inside attention",
                        "alibi": "no weights: a distance penalty added to the attention scores",
                        "sinusoidal": "no weights: fixed sine waves added to the token vectors",
                        "none": "no weights and no position information"}[b.kind]
        elif isinstance(b, TransformerBlock):
            for r in range(b.repeat):
                p = f"model.layers.{layer + r}"
                tensors += _attn_tensors(f"{p}.self_attn", C, spec, b.attention) + _mlp_tensors(f"{p}.mlp", C, b.mlp)
                tensors += [t for name in NORM_NAMES[b.norm_placement] if name
                            for t in _norm_tensors(f"{p}.{name}", b.norm, C)]
            shapes += _attn_shapes(spec, b.attention) + [("MLP hidden", f"(B, T, {b.mlp.hidden_size(C)})")]
            note = f"{b.repeat} layers (model.layers.{layer}–{layer + b.repeat - 1}), each with its own weights" \
                if b.repeat > 1 else f"model.layers.{layer}"
            layer += b.repeat
        elif isinstance(b, (AttentionLayerBlock, MLPLayerBlock)):
            p = f"model.layers.{layer}"
            tensors = _norm_tensors(f"{p}.input_layernorm", b.norm, C)
            if isinstance(b, AttentionLayerBlock):
                tensors += _attn_tensors(f"{p}.self_attn", C, spec, b.attention)
                shapes += _attn_shapes(spec, b.attention)
            else:
                tensors += _mlp_tensors(f"{p}.mlp", C, b.mlp)
                shapes.append(("MLP hidden", f"(B, T, {b.mlp.hidden_size(C)})"))
            note, layer = p, layer + 1
        elif isinstance(b, NormBlock):
            tensors, note, layer = _norm_tensors(f"model.layers.{layer}.norm", b.norm, C), f"model.layers.{layer}", \
                layer + 1
        elif isinstance(b, FinalNormBlock):
            tensors = _norm_tensors("model.norm", b.norm, C)
        elif isinstance(b, LMHeadBlock):
            shapes = [("vectors in", f"(B, T, {C})"), ("next-token scores out", f"(B, T, {V})")]
            if spec.tie_embeddings:
                note = f"tied: reuses the embedding matrix ({V}×{C}), no new parameters"
            else:
                tensors = [("lm_head.weight", (V, C))]
        params = sum(numel(shape) for _, shape in tensors)
        out.append(BlockCost(i, b.type, tensors, params, shapes, note))
    return out


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
