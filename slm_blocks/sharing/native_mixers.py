"""Native transformers families beyond the plain transformer: mixtures of experts (Mixtral, Qwen3-MoE), state-space
(Mamba2), short convolutions (LFM2) and the attention + Mamba2 hybrid (Bamba). sharing/native.py asks here when a
spec's layers are not all dense transformer layers.

Each family's class computes exactly one kind of layer list, checked against the installed transformers 5 source
(its pure-PyTorch path runs on a CPU; the CUDA kernels are optional):

    family     layers                                              per-layer choice the class expresses
    mixtral    transformer with experts, every layer               -
    qwen3_moe  transformer (QK-norm), with or without experts      mlp_only_layers: the dense ones
    mamba2     mamba2 without MLP                                  -
    lfm2       short_conv and transformer (QK-norm), each w/ MLP   layer_types: conv / full_attention, any order
    bamba      mamba2 with MLP and transformer (no QK-norm)        attn_layer_indices, any order

Bamba is the attention + Mamba2 hybrid because its layer is ours exactly: a Mamba2 mixer or attention, then a
SwiGLU MLP, both pre-norm. Jamba's mixer is Mamba 1 (no Mamba2 scan), and Falcon-H1 runs attention and Mamba2 side
by side inside one layer, scaled by μP multipliers.

Weights are the blocks' own names, renamed by module prefix (the blocks' `native` hooks list the names per family);
the experts, one MLP each in our model, are stacked into transformers' fused [E, 2·I, C] / [E, C, I] tensors.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, PreTrainedConfig

MIXER_FAMILIES = ("mixtral", "qwen3_moe", "mamba2", "lfm2", "bamba")


def _one(values) -> bool:
    """All equal (the settings are dataclasses: comparable, not hashable)."""
    values = list(values)
    return all(v == values[0] for v in values)


def _llama_like(b, qk_norm: bool) -> str:
    """Why a transformer layer is not the pre-RMSNorm, bias-free, SwiGLU layer these families share ("" if it is)."""
    a, m = b.attention, b.mlp
    if b.norm_placement != "pre" or b.residual != "sequential" or b.norm.kind != "rmsnorm":
        return "pre-RMSNorm layers with a sequential residual"
    if a.qkv_bias or a.out_bias or m.bias or not m.gated or m.activation != "silu":
        return "attention and MLP projections without bias and a SwiGLU (silu, gated) MLP"
    if a.qk_norm != qk_norm:
        return "QK-norm" if qk_norm else "attention without QK-norm"
    if b.full_attention_every is not None or a.sliding_window is not None:
        return "full attention (no sliding window)"
    return ""


def mixer_family(spec, parts: dict) -> tuple[str | None, str]:
    """(family, "") when a native class computes this spec's layers (not all dense transformer layers), else why."""
    layers, t = parts["layers"], parts["traits"]
    types = {b.type for b in layers}
    attn = [b for b in layers if b.type == "transformer"]
    from ..model.blocks import module_of

    if not all(_one(module_of(b).settings(b) for b in layers if b.type == kind) for kind in types - {"transformer"}) \
            or not _one((b.attention, b.norm, b.norm_placement, b.residual) for b in attn) \
            or not _one((b.experts, b.mlp) for b in attn if b.experts is not None):
        return None, "layers of one kind with different settings have no native transformers class"
    if not _one(b.norm for b in layers) or t.get("final_norm") is None or t["final_norm"] != layers[0].norm or \
            layers[0].norm.kind != "rmsnorm":
        return None, "native classes need RMSNorm everywhere, the final_norm block with the same settings as the layers"
    if t.get("embed_scale"):
        return None, "these native classes do not scale the embeddings"
    pos = t.get("positional", "none")
    experts = [b.experts for b in attn if b.experts is not None]
    if experts:  # Mixtral, Qwen3-MoE
        if types != {"transformer"}:
            return None, "a mixture of experts has a native class only in transformer blocks (Mixtral, Qwen3-MoE)"
        e = experts[0]
        if pos != "rope" or e.shared_hidden:
            return None, "Mixtral and Qwen3-MoE need RoPE and no shared expert"
        qk = attn[0].attention.qk_norm
        why = _llama_like(attn[0], qk)
        if why:
            return None, f"Mixtral and Qwen3-MoE need {why}"
        if not qk:
            if len(experts) < len(attn) or not e.norm_topk:
                return None, "Mixtral (no QK-norm) has experts in every layer and renormalises the top-k weights; " \
                             "Qwen3-MoE, which allows dense layers, needs QK-norm"
            return "mixtral", ""
        if not _one(b.mlp for b in attn if b.experts is None):
            return None, "Qwen3-MoE's dense layers share one MLP shape"
        return "qwen3_moe", ""
    if types == {"mamba2"}:
        if layers[0].mlp is not None:
            return None, "Mamba2 layers with an MLP match Bamba, which also needs RoPE positions; without MLPs they " \
                         "match Mamba2"
        if pos != "none":
            return None, "transformers' Mamba2 has no positions: use positional kind 'none' (or no positional block)"
        return "mamba2", ""
    if pos != "rope":
        return None, "LFM2 and Bamba need RoPE positions"
    mlp = layers[0].mlp
    if mlp is None or not _one(b.mlp for b in layers) or any(_llama_like(b, b.attention.qk_norm) for b in attn):
        return None, "LFM2 and Bamba layers each end in one SwiGLU MLP without bias, the same in every layer, and " \
                     "their attention is pre-RMSNorm, bias-free and full"
    if not (mlp.activation == "silu" and mlp.gated and not mlp.bias):
        return None, "LFM2 and Bamba use a SwiGLU MLP (silu, gated, no bias)"
    if types <= {"short_conv", "transformer"} and "short_conv" in types:
        if attn and not attn[0].attention.qk_norm:
            return None, "LFM2's attention layers have QK-norm"
        return "lfm2", ""
    if types <= {"mamba2", "transformer"} and "mamba2" in types:
        if attn and attn[0].attention.qk_norm:
            return None, "Bamba's attention layers have no QK-norm"
        if attn and attn[0].attention.head_size(spec.d_model) * attn[0].attention.n_heads != spec.d_model:
            return None, "Bamba's attention heads split d_model exactly (head_dim = d_model / n_heads)"
        return "bamba", ""
    return None, "this mix of layer types has no native transformers class (LFM2 mixes short_conv and attention, " \
                 "Bamba mamba2 and attention)"


# ----------------------------------------------------------------------------- configs


def mixer_config(spec, family: str, parts: dict, **token_ids) -> PreTrainedConfig:
    layers, traits = parts["layers"], parts["traits"]
    C = spec.d_model
    common = dict(vocab_size=spec.vocab_size, hidden_size=C, num_hidden_layers=len(layers),
                  tie_word_embeddings=spec.tie_embeddings, bos_token_id=token_ids.get("bos_token_id"),
                  eos_token_id=token_ids.get("eos_token_id"), pad_token_id=token_ids.get("pad_token_id"))
    rope = {"rope_type": "default", "rope_theta": traits.get("rope_theta", 10000.0)}
    attn = [b for b in layers if b.type == "transformer"]
    eps = layers[0].norm.eps
    if family == "mamba2":
        m = layers[0].mamba
        return AutoConfig.for_model("mamba2", num_heads=m.heads(C), head_dim=m.head_dim, state_size=m.d_state,
                                    expand=m.expand, n_groups=m.n_groups, conv_kernel=m.conv_kernel,
                                    chunk_size=m.chunk_size, use_bias=m.proj_bias, use_conv_bias=m.conv_bias,
                                    layer_norm_epsilon=eps, residual_in_fp32=False, **common)
    a = attn[0].attention if attn else None
    heads = dict(num_attention_heads=a.n_heads, num_key_value_heads=a.kv_heads(), head_dim=a.head_size(C)) if a \
        else {}
    mlp = next((b.mlp for b in layers if b.mlp is not None and getattr(b, "experts", None) is None), None)
    if family in ("mixtral", "qwen3_moe"):
        b = next(b for b in attn if b.experts is not None)
        e = b.experts
        kw = dict(rope_parameters=rope, rms_norm_eps=eps, max_position_embeddings=spec.max_seq_len,
                  num_experts_per_tok=e.top_k, router_aux_loss_coef=e.aux_loss_coef, attention_dropout=0.0, **heads,
                  **common)
        if family == "mixtral":
            return AutoConfig.for_model("mixtral", intermediate_size=b.mlp.hidden_size(C),
                                        num_local_experts=e.n_experts, **kw)
        dense = [i for i, layer in enumerate(layers) if layer.experts is None]
        return AutoConfig.for_model("qwen3_moe", moe_intermediate_size=b.mlp.hidden_size(C), num_experts=e.n_experts,
                                    intermediate_size=(mlp or b.mlp).hidden_size(C), norm_topk_prob=e.norm_topk,
                                    mlp_only_layers=dense, decoder_sparse_step=1, attention_bias=False, **kw)
    if family == "lfm2":
        conv = next(b.conv for b in layers if b.type == "short_conv")
        layer_types = ["full_attention" if b.type == "transformer" else "conv" for b in layers]
        return AutoConfig.for_model("lfm2", intermediate_size=mlp.hidden_size(C), block_auto_adjust_ff_dim=False,
                                    norm_eps=eps, conv_bias=conv.bias, conv_L_cache=conv.kernel,
                                    layer_types=layer_types,
                                    rope_parameters=rope, max_position_embeddings=spec.max_seq_len,
                                    **(heads or dict(num_attention_heads=1, num_key_value_heads=1)), **common)
    if family == "bamba":
        m = next(b.mamba for b in layers if b.type == "mamba2")
        heads.pop("head_dim", None)  # Bamba's attention splits d_model (checked in mixer_family)
        return AutoConfig.for_model(
            "bamba", intermediate_size=mlp.hidden_size(C), rms_norm_eps=eps, max_position_embeddings=spec.max_seq_len,
            attn_layer_indices=[i for i, b in enumerate(layers) if b.type == "transformer"],
            mamba_n_heads=m.heads(C), mamba_d_head=m.head_dim, mamba_n_groups=m.n_groups, mamba_d_state=m.d_state,
            mamba_d_conv=m.conv_kernel, mamba_expand=m.expand, mamba_chunk_size=m.chunk_size,
            mamba_conv_bias=m.conv_bias, mamba_proj_bias=m.proj_bias, attention_bias=False, mlp_bias=False,
            rope_parameters={**rope, "partial_rotary_factor": 1.0}, attention_dropout=0.0,
            **(heads or dict(num_attention_heads=1, num_key_value_heads=1)), **common)
    raise ValueError(f"unknown family {family!r}")


# ----------------------------------------------------------------------------- weights


def mixer_state_dict(family: str, parts: dict, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in `family`'s names: module prefixes renamed as the blocks' hooks list them, experts fused."""
    out = {_renamed(key, family, parts): w for key, w in state.items()}
    return _fuse_experts(out) if family in ("mixtral", "qwen3_moe") else out


def state_from_mixer(family: str, parts: dict, ours: list[str], state: dict[str, torch.Tensor]) -> dict:
    """The inverse, for reopening our own native export: `state` in `family`'s names -> our names (`ours`: the
    keys of the model the spec builds), the experts back to one MLP each. Files hold the layout transformers writes,
    which is not always the one it computes with: its save_pretrained reverses its load-time conversions (Mixtral's
    block_sparse_moe.experts.{e}.w1 / w3 / w2, Qwen3-MoE's experts one by one); fused tensors are split too."""
    if family == "mixtral":
        state = {_from_mixtral_file(key): w for key, w in state.items()}
    if family in ("mixtral", "qwen3_moe"):
        state = _split_experts(state)
    theirs = {_renamed(key, family, parts): key for key in ours}
    return {theirs.get(key, key): w for key, w in state.items()}


def _renamed(key: str, family: str, parts: dict) -> str:
    names, inside = parts["names"].get(family, {}), parts["layer_names"].get(family, {})
    base, part = key.rsplit(".", 1)
    if base in names:
        return f"{names[base][0]}.{part}"
    if not key.startswith("model.layers."):
        return key
    _, _, i, rest = key.split(".", 3)
    prefix = max((p for p in inside if rest == p or rest.startswith(p + ".")), key=len, default=None)
    if prefix is not None:
        rest = inside[prefix][0] + rest[len(prefix):]
    return f"{names.get('model.layers', ('model.layers', False))[0]}.{i}.{rest}"


MIXTRAL_FILE = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


def _from_mixtral_file(key: str) -> str:
    """block_sparse_moe.gate -> mlp.gate, block_sparse_moe.experts.{e}.w1 -> mlp.experts.{e}.gate_proj, ..."""
    key = key.replace(".block_sparse_moe.", ".mlp.")
    head, sep, rest = key.partition(".mlp.experts.")
    parts = rest.split(".")
    if sep and len(parts) == 3 and parts[1] in MIXTRAL_FILE:
        return f"{head}.mlp.experts.{parts[0]}.{MIXTRAL_FILE[parts[1]]}.{parts[2]}"
    return key


def _split_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, w in state.items():
        if key.endswith(".mlp.experts.gate_up_proj"):
            head = key[: -len("gate_up_proj")]
            for e, gate_up in enumerate(w):
                gate, up = gate_up.chunk(2)
                out[f"{head}{e}.gate_proj.weight"], out[f"{head}{e}.up_proj.weight"] = gate, up
        elif key.endswith(".mlp.experts.down_proj"):
            head = key[: -len("down_proj")]
            for e, down in enumerate(w):
                out[f"{head}{e}.down_proj.weight"] = down
        else:
            out[key] = w
    return out


def _fuse_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mlp.experts.{e}.{gate,up,down}_proj.weight -> mlp.experts.gate_up_proj (E, 2I, C), mlp.experts.down_proj
    (E, C, I), as transformers 5 stores experts."""
    out, experts = {}, {}
    for key, w in state.items():
        head, sep, rest = key.partition(".mlp.experts.")
        if not sep:
            out[key] = w
            continue
        e, proj = rest.split(".")[:2]
        experts.setdefault(head, {}).setdefault(int(e), {})[proj] = w
    for head, by_expert in experts.items():
        order = [by_expert[e] for e in sorted(by_expert)]
        out[f"{head}.mlp.experts.gate_up_proj"] = torch.stack([torch.cat([x["gate_proj"], x["up_proj"]])
                                                               for x in order])
        out[f"{head}.mlp.experts.down_proj"] = torch.stack([x["down_proj"] for x in order])
    return out
