"""Reopen an exported folder, or a native GPT-2 / Llama / Mistral / Qwen3 / Gemma 3 checkpoint, as spec +
weights + tokenizer, to keep training or fine-tune it.

Import never runs code from the folder: the spec comes from `slm_spec.json` or from the native config,
and weights are read from safetensors files only (no pickles, no `trust_remote_code`). With `caps` (the app's
limits) the model the spec describes is checked before a weight is read or a parameter allocated: a tiny
weights file next to a huge `slm_spec.json` or `max_position_embeddings` is refused, not built.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .native import FAMILIES, native_family, native_parts
from .native_mixers import state_from_mixer
from ..model.spec import ModelSpec
from ..training.tokenization import load_tokenizer

MODEL_TYPES = {"gpt2": "gpt2", "llama": "llama", "mistral": "mistral", "qwen3": "qwen3", "gemma3_text": "gemma3"}
# native classes our own exports use for experts, state-space and convolution mixers (reopened with their
# slm_spec.json; a checkpoint of these from elsewhere has no spec to read)
MIXER_MODEL_TYPES = {"mixtral": "mixtral", "qwen3_moe": "qwen3_moe", "mamba2": "mamba2", "lfm2": "lfm2",
                     "bamba": "bamba"}


class ImportFailed(ValueError):
    """A folder that cannot be imported; the message says why and what would work."""


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ImportFailed(f"{folder} has no model.safetensors; only safetensors weights are loaded "
                           "(.bin / .pt files are refused because unpickling them can run code)")
    state = {}
    for name in files:
        path = (folder / name).resolve()
        if path.parent != folder.resolve():
            raise ImportFailed(f"weight file {name!r} points outside {folder}")
        try:
            state.update(load_file(path))
        except Exception as e:  # truncated file, oversized or corrupt header, ...
            raise ImportFailed(f"{name} is not a valid safetensors file ({type(e).__name__}: {str(e)[:120]}); "
                               "re-export or re-download it") from None
    return state


MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB; a bigger one is not read


def _read_text(path: Path) -> str:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ImportFailed(f"{path.name} is larger than {MAX_CONFIG_BYTES // 1024} KB; it is not a model config")
    return path.read_text(encoding="utf-8", errors="replace")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(_read_text(path))
    except (ValueError, RecursionError):
        raise ImportFailed(f"{path.name} is not valid JSON; re-export the model") from None
    if not isinstance(data, dict):
        raise ImportFailed(f"{path.name} must hold a JSON object; re-export the model")
    return data


def check_import_caps(spec: ModelSpec, caps) -> None:
    """ImportFailed when the model `spec` describes is over the app's caps (parameters, context length,
    memory to fine-tune it with batch 1), so nothing that big is ever allocated."""
    from ..training.config import TrainConfig
    from ..training.job import model_cap_problems

    problems = model_cap_problems(spec, TrainConfig(batch_size=1), caps, "")
    if problems:
        raise ImportFailed("this model is too big for this app: " + "; ".join(p.message for p in problems))


def spec_from_native_config(cfg: dict) -> ModelSpec:
    """The block spec that computes the same function as a native config (supported shapes only)."""
    mt = cfg.get("model_type")
    if mt == "gpt2":
        act = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
               "silu": "silu"}.get(cfg.get("activation_function", "gelu_new"))
        if act is None:
            raise ImportFailed(f"GPT-2 activation {cfg.get('activation_function')!r} is not supported")
        norm = {"kind": "layernorm", "eps": cfg.get("layer_norm_epsilon", 1e-5), "bias": True}
        C = cfg["n_embd"]
        blocks = [{"type": "embedding"}, {"type": "positional", "kind": "learned"},
                  {"type": "transformer", "repeat": cfg["n_layer"],
                   "attention": {"n_heads": cfg["n_head"], "qkv_bias": True, "out_bias": True},
                   "mlp": {"activation": act, "hidden": cfg.get("n_inner") or 4 * C, "bias": True}, "norm": norm},
                  {"type": "final_norm", "norm": norm}, {"type": "lm_head"}]
        return ModelSpec.from_dict({"vocab_size": cfg["vocab_size"], "d_model": C, "max_seq_len": cfg["n_positions"],
                                    "tie_embeddings": cfg.get("tie_word_embeddings", True), "blocks": blocks,
                                    "name": "imported-gpt2", "follows": "GPT-2"})
    if mt not in ("llama", "mistral", "qwen3", "gemma3_text"):
        raise ImportFailed(f"model_type {mt!r} is not importable; supported: {', '.join(MODEL_TYPES)}")
    rope = cfg.get("rope_parameters")
    if rope is None:  # transformers 4 configs: top-level rope_theta / rope_scaling
        scaling = cfg.get("rope_scaling") or {}
        rope = {"rope_type": scaling.get("rope_type", scaling.get("type", "default")),
                "rope_theta": cfg.get("rope_theta", 10000.0)}
        if mt == "gemma3_text":
            rope = {"full_attention": rope, "sliding_attention": {"rope_type": "default",
                                                                  "rope_theta": cfg.get("rope_local_base_freq", 10000.0)}}
    standard = ("gelu_pytorch_tanh", "gelu_new") if mt == "gemma3_text" else ("silu",)
    act = cfg.get("hidden_activation" if mt == "gemma3_text" else "hidden_act", standard[0])
    if act not in standard:
        raise ImportFailed(f"activation {act!r} is not supported for {mt} (only its standard gated activation)")
    if cfg.get("final_logit_softcapping") or cfg.get("attn_logit_softcapping"):
        raise ImportFailed("logit soft-capping has no block in SLM Blocks yet; this checkpoint is not importable")
    if mt == "gemma3_text":
        full, local = rope.get("full_attention", {}), rope.get("sliding_attention", {})
    else:
        full, local = rope, {}
    if full.get("rope_type", "default") != "default" or (local and local.get("rope_type", "default") != "default"):
        raise ImportFailed("RoPE scaling (rope_type other than 'default') is not supported")
    C, H = cfg["hidden_size"], cfg["num_attention_heads"]
    layer_types = cfg.get("layer_types") or []
    sliding = [t == "sliding_attention" for t in layer_types]
    window = cfg.get("sliding_window") if (mt == "mistral" or any(sliding)) else None
    every = None
    if any(sliding) and not all(sliding):
        full_idx = [i + 1 for i, s in enumerate(sliding) if not s]
        every = full_idx[0]
        if [i + 1 for i in range(len(sliding)) if (i + 1) % every == 0] != full_idx:
            raise ImportFailed("this mix of sliding and full attention layers is not periodic; not supported")
    if cfg.get("mlp_bias"):
        raise ImportFailed("MLP biases in Llama-style checkpoints are not supported")
    head_dim = cfg.get("head_dim") or C // H
    if mt == "gemma3_text" and cfg.get("query_pre_attn_scalar", head_dim) != head_dim:
        raise ImportFailed(f"query_pre_attn_scalar {cfg.get('query_pre_attn_scalar')} differs from head_dim "
                           f"{head_dim}; SLM Blocks scales attention by head_dim, so this checkpoint is not importable")
    bias = bool(cfg.get("attention_bias", False))
    attention = {"n_heads": H, "n_kv_heads": cfg.get("num_key_value_heads") or H,
                 "head_dim": head_dim, "qkv_bias": bias, "out_bias": bias,
                 "qk_norm": mt in ("qwen3", "gemma3_text"), "sliding_window": window}
    norm = {"kind": "rmsnorm", "eps": cfg.get("rms_norm_eps", 1e-6)}
    gemma = mt == "gemma3_text"
    block = {"type": "transformer", "repeat": cfg["num_hidden_layers"], "attention": attention,
             "mlp": {"activation": "gelu_tanh" if gemma else "silu", "gated": True, "hidden": cfg["intermediate_size"]},
             "norm": norm, "norm_placement": "sandwich" if gemma else "pre", "full_attention_every": every}
    positional = {"type": "positional", "kind": "rope", "rope_theta": full.get("rope_theta", 10000.0)}
    if gemma:
        positional["local_rope_theta"] = local.get("rope_theta", 10000.0)
    return ModelSpec.from_dict({
        "vocab_size": cfg["vocab_size"], "d_model": C, "max_seq_len": min(cfg.get("max_position_embeddings", 2048),
                                                                        1 << 20),
        "tie_embeddings": cfg.get("tie_word_embeddings", gemma), "name": f"imported-{MODEL_TYPES[mt]}",
        "follows": MODEL_TYPES[mt], "blocks": [{"type": "embedding", "scale": gemma}, positional, block,
                                               {"type": "final_norm", "norm": norm}, {"type": "lm_head"}]})


def _from_gpt2(spec: ModelSpec, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of native._to_gpt2: split GPT-2's fused c_attn and undo the Conv1D transposes (the blocks'
    GPT-2 names, read backwards)."""
    parts = native_parts(spec)[0]
    out = {f"{ours}.{part}": state[f"{theirs}.{part}"] for ours, (theirs, _) in parts["names"]["gpt2"].items()
           for part in ("weight", "bias") if f"{theirs}.{part}" in state}
    i = 0
    while f"transformer.h.{i}.attn.c_attn.weight" in state:
        h, p = f"transformer.h.{i}.", f"model.layers.{i}."
        w, b = state[h + "attn.c_attn.weight"].T, state[h + "attn.c_attn.bias"]  # (3C, C), (3C,)
        for x, wx, bx in zip("qkv", w.chunk(3), b.chunk(3)):
            out[p + f"self_attn.{x}_proj.weight"] = wx.contiguous()
            out[p + f"self_attn.{x}_proj.bias"] = bx.contiguous()
        for ours, (theirs, transposed) in parts["layer_names"]["gpt2"].items():
            w = state[h + theirs + ".weight"]
            out[p + ours + ".weight"] = w.T.contiguous() if transposed else w
            out[p + ours + ".bias"] = state[h + theirs + ".bias"]
        i += 1
    return out


def _state_names(spec: ModelSpec):
    """The parameter names the spec's model has (from the blocks' tensors: nothing is built)."""
    from ..model.estimate import block_costs

    return (name for cost in block_costs(spec) for name, _ in cost.tensors)


def import_hf(folder: str | Path, caps=None):
    """(model, tokenizer, spec) from an exported or native checkpoint folder; ImportFailed says what fails.
    `caps` (training.job.Caps): refuse a model over them before reading weights or allocating anything."""
    from ..model.modeling import build_model

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ImportFailed(f"{folder} has no config.json; pick a folder exported by SLM Blocks or a transformers "
                           "checkpoint folder")
    cfg = _read_json(folder / "config.json")
    mt = cfg.get("model_type")
    spec_file = folder / "slm_spec.json"
    spec = ModelSpec.from_json(_read_text(spec_file)) if spec_file.is_file() else spec_from_native_config(cfg)
    if caps is not None:
        check_import_caps(spec, caps)
    state = _read_weights(folder)
    family = MODEL_TYPES.get(mt)
    if mt == "slm_blocks":
        ours = state
    elif family == "gpt2":
        ours = _from_gpt2(spec, state)
    elif family == "gemma3":
        ours = {k: (v + 1 if k.endswith("norm.weight") else v) for k, v in state.items()}
    elif family in FAMILIES:
        ours = state
    elif mt in MIXER_MODEL_TYPES and spec_file.is_file():  # our own native export of experts / mixers / hybrids
        if native_family(spec)[0] != MIXER_MODEL_TYPES[mt]:
            raise ImportFailed(f"slm_spec.json in {folder} does not describe a {mt} model; re-export the folder")
        ours = state_from_mixer(MIXER_MODEL_TYPES[mt], native_parts(spec)[0], list(_state_names(spec)), state)
    else:
        raise ImportFailed(f"model_type {mt!r} is not importable; supported: slm_blocks, {', '.join(MODEL_TYPES)}")
    ids = {k: cfg.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if isinstance(cfg.get(k), int)}
    model = build_model(spec, **ids)
    try:
        missing, unexpected = model.load_state_dict(ours, strict=False)
    except RuntimeError as e:  # shapes that do not fit the config
        raise ImportFailed(f"the weights in {folder} do not fit its config: {str(e).splitlines()[-1][:200]}") from None
    missing = [k for k in missing if not (k == "lm_head.weight" and spec.tie_embeddings)]
    if missing or unexpected:
        raise ImportFailed(f"the weights in {folder} do not match its config: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    model.tie_weights()
    tokenizer = load_tokenizer(folder) if (folder / "tokenizer_config.json").is_file() else None
    return model.eval(), tokenizer, spec
