"""Native transformers families: which one a spec matches, and the weights mapped into it (mixtures of experts,
state-space and convolution mixers and hybrids: native_mixers.py).

Our parameter names already follow Llama's, so Llama, Mistral, Qwen3 and Gemma 3 are a near-identity
copy (Gemma stores RMSNorm weights as w - 1); GPT-2 renames and fuses q/k/v into its Conv1D layout.
When nothing matches, `native_family` says why in plain words, and export falls back to custom code.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PreTrainedConfig

from ..model.blocks import hook, module_of
from ..model.spec import ModelSpec

from .native_mixers import MIXER_FAMILIES, mixer_config, mixer_family, mixer_state_dict

FAMILIES = ("gpt2", "llama", "mistral", "qwen3", "gemma3") + MIXER_FAMILIES


def native_parts(spec: ModelSpec) -> tuple[dict | None, str]:
    """What the blocks tell a native class (their `native` hooks, merged): traits, layers and tensor names; or
    (None, why not) when a block has no place in one."""
    parts = {"traits": {}, "layers": [], "names": {}, "layer_names": {}}
    for b in spec.blocks:
        part = hook(b, "native", spec)
        if isinstance(part, str):
            return None, part
        parts["traits"].update(part.get("traits", {}))
        parts["layers"] += part.get("layers", [])
        for key in ("names", "layer_names"):  # ours -> (a family's, transposed), in the model / inside a layer
            for family, names in part.get(key, {}).items():
                parts[key].setdefault(family, {}).update(names)
    return parts, ""


def native_family(spec: ModelSpec) -> tuple[str | None, str]:
    """(family, "") when a native transformers class computes exactly this spec, else (None, why not)."""
    parts, why = native_parts(spec)
    if parts is None:
        return None, why
    layers, t = parts["layers"], parts["traits"]
    if not layers:
        return None, "a model without transformer layers has no native transformers class"
    if any(b.type != "transformer" or b.experts is not None for b in layers):  # experts, mixers, hybrids
        return mixer_family(spec, parts)
    first = layers[0]
    same = module_of(first).settings
    if any(module_of(b) is not module_of(first) or same(b) != same(first) for b in layers):
        return None, "transformer blocks with different settings have no native transformers class"
    if t.get("final_norm") is None or t["final_norm"] != first.norm:
        return None, "native classes need a final_norm block with the same settings as the layers' norms"
    a, m, pos, scaled = first.attention, first.mlp, t.get("positional", "none"), t.get("embed_scale", False)
    if first.residual != "sequential":
        return None, "parallel residuals have no native class among GPT-2, Llama, Mistral, Qwen3 and Gemma 3"
    if pos == "alibi":
        return None, "ALiBi positions have no native transformers class for these architectures"
    if pos == "learned":
        if (first.norm_placement == "pre" and first.norm.kind == "layernorm" and first.norm.bias and a.qkv_bias
                and a.out_bias and not a.qk_norm and a.sliding_window is None and a.kv_heads() == a.n_heads
                and a.head_size(spec.d_model) * a.n_heads == spec.d_model and not m.gated and m.bias and not scaled):
            return "gpt2", ""
        return None, ("learned positions match only GPT-2, which needs pre-LayerNorm with bias, biases on all "
                      "attention and MLP projections, full multi-head attention and a plain (non-gated) MLP")
    if pos != "rope":
        return None, f"'{pos}' positions have no native transformers class (GPT-2 uses learned, the others RoPE)"
    if first.norm.kind != "rmsnorm" or not m.gated or m.bias:
        return None, "RoPE families (Llama, Mistral, Qwen3, Gemma 3) need RMSNorm and a gated MLP without bias"
    rope_local = t.get("local_rope_theta")
    if first.norm_placement == "sandwich":
        if m.activation == "gelu_tanh" and a.qk_norm and scaled and not a.qkv_bias and not a.out_bias:
            return "gemma3", ""
        return None, "sandwich norms match only Gemma 3, which needs a GeGLU-tanh MLP, QK-norm, scaled embeddings " \
                     "and no attention bias"
    if first.norm_placement != "pre" or scaled or m.activation != "silu" or rope_local is not None:
        return None, ("Llama, Mistral and Qwen3 need pre-norm, a SwiGLU (silu, gated) MLP, unscaled embeddings and "
                      "one RoPE base")
    if a.qkv_bias != a.out_bias:
        return None, "Llama-style classes put a bias on all four attention projections or on none"
    if a.qk_norm:
        return ("qwen3", "") if not a.qkv_bias else (None, "Qwen3 (QK-norm) has no attention bias option")
    if first.full_attention_every is not None:  # Qwen3 would mix them, but it always has QK-norm weights
        return None, ("sliding-window layers mixed with full-attention layers have a native class only with "
                      "QK-norm (Qwen3) or Gemma 3's sandwich norms")
    if a.sliding_window is not None:
        return ("mistral", "") if not a.qkv_bias else (None, "Mistral (sliding window) has no attention bias option")
    return "llama", ""


# ----------------------------------------------------------------------------- configs


def native_config(spec: ModelSpec, family: str, **token_ids) -> PreTrainedConfig:
    """The transformers config of `family` describing `spec` (token_ids: bos/eos/pad_token_id)."""
    from transformers import AutoConfig

    parts, _ = native_parts(spec)
    if family in MIXER_FAMILIES:
        return mixer_config(spec, family, parts, **token_ids)
    b, n_layers, traits = parts["layers"][0], len(parts["layers"]), parts["traits"]
    a, m = b.attention, b.mlp
    common = dict(vocab_size=spec.vocab_size, tie_word_embeddings=spec.tie_embeddings,
                  bos_token_id=token_ids.get("bos_token_id"), eos_token_id=token_ids.get("eos_token_id"),
                  pad_token_id=token_ids.get("pad_token_id"))
    if family == "gpt2":
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}[m.activation]
        return AutoConfig.for_model("gpt2", n_positions=spec.max_seq_len, n_embd=spec.d_model, n_layer=n_layers,
                                    n_head=a.n_heads, n_inner=m.hidden_size(spec.d_model),
                                    activation_function=act, layer_norm_epsilon=b.norm.eps, resid_pdrop=0.0,
                                    embd_pdrop=0.0, attn_pdrop=0.0, **common)
    windows = [w for _, _, w in spec.layer_plan()]
    layer_types = ["sliding_attention" if w is not None else "full_attention" for w in windows]
    kw = dict(hidden_size=spec.d_model, intermediate_size=m.hidden_size(spec.d_model), num_hidden_layers=n_layers,
              num_attention_heads=a.n_heads, num_key_value_heads=a.kv_heads(),
              head_dim=a.head_size(spec.d_model), max_position_embeddings=spec.max_seq_len, rms_norm_eps=b.norm.eps,
              attention_dropout=0.0, **common)
    rope = {"rope_type": "default", "rope_theta": traits["rope_theta"]}
    if family == "llama":
        return AutoConfig.for_model("llama", rope_parameters=rope, attention_bias=a.qkv_bias, mlp_bias=False, **kw)
    if family == "mistral":
        return AutoConfig.for_model("mistral", rope_parameters=rope, sliding_window=a.sliding_window, **kw)
    if family == "qwen3":
        return AutoConfig.for_model("qwen3", rope_parameters=rope, sliding_window=a.sliding_window,
                                    use_sliding_window=a.sliding_window is not None, layer_types=layer_types, **kw)
    if family == "gemma3":
        local = {"rope_type": "default", "rope_theta": traits["local_rope_theta"] or traits["rope_theta"]}
        return AutoConfig.for_model("gemma3_text", rope_parameters={"full_attention": rope, "sliding_attention": local},
                                    sliding_window=a.sliding_window or spec.max_seq_len, layer_types=layer_types,
                                    query_pre_attn_scalar=a.head_size(spec.d_model), hidden_activation="gelu_pytorch_tanh",
                                    **kw)
    raise ValueError(f"unknown family {family!r}")


# ----------------------------------------------------------------------------- weights


def native_state_dict(spec: ModelSpec, family: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict renamed/reshaped into `family`'s layout (tied lm_head left out)."""
    state = {k: v for k, v in state.items() if not (spec.tie_embeddings and k == "lm_head.weight")}
    if family in ("llama", "mistral", "qwen3"):
        return dict(state)
    if family == "gemma3":  # Gemma's RMSNorm computes x * (1 + w)
        return {k: (v - 1 if k.endswith("norm.weight") else v) for k, v in state.items()}
    if family in MIXER_FAMILIES:
        return mixer_state_dict(family, native_parts(spec)[0], state)
    if family == "gpt2":
        parts = native_parts(spec)[0]
        return _to_gpt2(state, parts["names"]["gpt2"], parts["layer_names"]["gpt2"])
    raise ValueError(f"unknown family {family!r}")


def _to_gpt2(state: dict[str, torch.Tensor], names: dict, layer_names: dict) -> dict[str, torch.Tensor]:
    """GPT-2's layout: the blocks' names (ours -> (GPT-2's, stored transposed because GPT-2's Conv1D is
    (in, out))), a layer's inside `transformer.h.{i}.`; q, k and v fused into one c_attn per layer."""
    out = {}
    for key, w in state.items():
        base, part = key.rsplit(".", 1)
        if base in names:
            theirs, transposed = names[base]
            out[f"{theirs}.{part}"] = w.T.contiguous() if transposed else w
    i = 0
    while f"model.layers.{i}.self_attn.q_proj.weight" in state:
        p, h = f"model.layers.{i}.", f"transformer.h.{i}."
        qkv = [state[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]
        out[h + "attn.c_attn.weight"] = torch.cat(qkv).T.contiguous()
        out[h + "attn.c_attn.bias"] = torch.cat([state[p + f"self_attn.{x}_proj.bias"] for x in "qkv"])
        for ours, (theirs, transposed) in layer_names.items():
            if f"{p}{ours}.weight" in state:
                w = state[p + ours + ".weight"]
                out[h + theirs + ".weight"] = w.T.contiguous() if transposed else w
                out[h + theirs + ".bias"] = state[p + ours + ".bias"]
        i += 1
    return out


def to_native(model, **token_ids):
    """A native transformers model (GPT2LMHeadModel, LlamaForCausalLM, ...) with `model`'s weights.

    Raises ValueError with the plain-words reason when the spec matches no native family."""
    spec = model.config.model_spec()
    family, why = native_family(spec)
    if family is None:
        raise ValueError(why)
    config = native_config(spec, family, **token_ids)
    attn = "eager" if family == "mamba2" else "sdpa"  # Mamba2 has no attention to dispatch
    native = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=model.dtype)
    state = native_state_dict(spec, family, model.state_dict())
    missing, unexpected = native.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (spec.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping to {family} is incomplete: missing {missing}, unexpected {unexpected}")
    native.tie_weights()
    return native.eval() if not model.training else native
