"""GGUF for the families beyond the plain transformer (gguf_export.py calls these for them):

    family     GGUF architecture   what differs from the transformer families
    qwen3_moe  qwen3moe            experts stacked into ffn_{gate,up,down}_exps (E, ·, ·), the router ffn_gate_inp;
                                   expert_count / expert_used_count / expert_feed_forward_length
    lfm2       lfm2                shortconv.{in_proj,conv,out_proj}, the convolution stored (C, L); the final norm is
                                   token_embd_norm; head_count_kv per layer, 0 marking a convolution layer

transformers' GGUF reader verifies both (gguf_export.py's check). It reads qwen3moe's expert width from nowhere
(its default 768, the width of the released Qwen3-MoE models): a file whose experts are narrower is refused here
rather than written for a reader that would misread it. Mixtral (llama.cpp's llama with experts), Mamba2 and Bamba
(granitehybrid) have llama.cpp architectures that transformers' reader does not load; they are refused with that
reason until a reader can check them.
"""

from __future__ import annotations

import torch

GGUF_MIXER_ARCH = {"qwen3_moe": "qwen3moe", "lfm2": "lfm2"}
F32_ONLY = ("shortconv.conv.weight",)  # llama.cpp's ssm_conv reads its kernel in f32 only
QWEN3MOE_READER_WIDTH = 768  # transformers' Qwen3MoeConfig default moe_intermediate_size, which its reader keeps
UNREADABLE = {
    "mixtral": "llama.cpp runs Mixtral as its llama architecture with experts, which transformers' GGUF reader "
               "loads as a dense Llama and cannot check; share the transformers export (MixtralForCausalLM)",
    "mamba2": "transformers' GGUF reader has no Mamba2 (only Mamba 1), so a file could not be checked; share the "
              "transformers export (Mamba2ForCausalLM)",
    "bamba": "llama.cpp runs Bamba as granitehybrid, which transformers' GGUF reader does not load, so a file could "
             "not be checked; share the transformers export (BambaForCausalLM)",
}


def mixer_support(spec, family: str, layers: list) -> tuple[str | None, str]:
    if family in UNREADABLE:
        return None, UNREADABLE[family]
    if family == "qwen3_moe":
        dense = [i for i, b in enumerate(layers) if b.experts is None]
        if dense:
            return None, (f"llama.cpp's qwen3moe has experts in every layer; layers {dense} are dense (Qwen3-MoE's "
                          "mlp_only_layers): share the transformers export")
        width = layers[0].mlp.hidden_size(spec.d_model)
        if width != QWEN3MOE_READER_WIDTH:
            return None, (f"the experts are {width} wide; transformers' GGUF reader, which checks the file, assumes "
                          f"Qwen3-MoE's {QWEN3MOE_READER_WIDTH}: set the MLP hidden width to {QWEN3MOE_READER_WIDTH} "
                          "to export GGUF, or share the transformers export")
    if family == "lfm2":
        a = next((b.attention for b in layers if b.type == "transformer"), None)
        if a is not None and a.head_size(spec.d_model) * a.n_heads != spec.d_model:
            return None, "llama.cpp's LFM2 splits d_model into its heads: head_dim must be d_model / n_heads"
    return GGUF_MIXER_ARCH[family], ""


def mixer_hparams(w, spec, arch: str, layers: list, n_ctx: int) -> None:
    """The key-values of `arch` that the transformer families do not write."""
    attn = next((b for b in layers if b.type == "transformer"), None)
    a = attn.attention if attn is not None else None
    mlp = layers[0].mlp
    w.add_context_length(n_ctx)
    w.add_embedding_length(spec.d_model)
    w.add_block_count(len(layers))
    w.add_feed_forward_length(mlp.hidden_size(spec.d_model))
    w.add_vocab_size(spec.vocab_size)
    w.add_layer_norm_rms_eps(layers[0].norm.eps)
    w.add_head_count(a.n_heads if a else 1)
    if a is not None:
        w.add_rope_dimension_count(a.head_size(spec.d_model))
    if arch == "qwen3moe":
        e = layers[0].experts
        w.add_head_count_kv(a.kv_heads())
        w.add_key_length(a.head_size(spec.d_model))
        w.add_value_length(a.head_size(spec.d_model))
        w.add_expert_count(e.n_experts)
        w.add_expert_used_count(e.top_k)
        w.add_expert_feed_forward_length(mlp.hidden_size(spec.d_model))
    if arch == "lfm2":  # llama.cpp tells attention layers from convolution layers by their kv heads
        w.add_head_count_kv([b.attention.kv_heads() if b.type == "transformer" else 0 for b in layers])
        w.add_shortconv_l_cache(next(b.conv.kernel for b in layers if b.type == "short_conv"))


def mixer_tensors(out: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """The GGUF-named tensors in `arch`'s layout: experts stacked, LFM2's convolution (C, 1, L) as (C, L)."""
    stacked, experts = {}, {}
    for key, w in out.items():
        if ".mlp.experts." in key:  # blk.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight
            blk, rest = key.split(".mlp.experts.")
            e, proj = rest.split(".")[:2]
            experts.setdefault((blk, proj), {})[int(e)] = w
        elif key.endswith("shortconv.conv.weight"):
            stacked[key] = w[:, 0]
        else:
            stacked[key] = w
    for (blk, proj), by_expert in experts.items():
        name = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}[proj]
        stacked[f"{blk}.{name}.weight"] = torch.stack([by_expert[e] for e in sorted(by_expert)])
    return stacked
