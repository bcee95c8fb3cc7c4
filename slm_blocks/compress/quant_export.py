"""Export an int8 / int4 model that plain `transformers` loads: torchao tensors in safetensors, and the
`quantization_config` (TorchAoConfig) in config.json, so `AutoModelForCausalLM.from_pretrained(folder)` needs
only `pip install torchao` -- no remote code for the native families.

How transformers 5 does it (transformers/quantizers/quantizer_torchao.py): `save_pretrained` flattens each
torchao tensor into plain tensors (`..._weight_qdata`, `..._weight_scale`) plus JSON metadata in the
safetensors header; `from_pretrained` sees `quant_method: torchao` and rebuilds the tensor subclasses. So the
export quantizes the fp32 native model through transformers itself (`from_pretrained(quantization_config=
TorchAoConfig(...))`) with the same torchao config the app uses, then saves it; the reloaded model holds
bit-identical quantized weights to `quantize_model` on our own model.

GPT-2 shapes are written as `GPTBigCodeForCausalLM` (multi_query=False): the same computation as GPT-2 but
with nn.Linear layers, which torchao quantizes (GPT-2's Conv1D layers are not quantized by transformers).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from .quantize import check_quantizable, quantize_model, resolve_group_size, torchao_config
from ..model.spec import ModelSpec
from ..sharing.export import ExportError, _save_custom, _verify
from ..sharing.native import native_family, native_parts, to_native
from ..training.tokenization import save_tokenizer

LOGIT_TOLERANCE = 1e-4  # reloaded quantized export vs the in-app quantized model (same quantized weights)


@dataclass
class QuantExportResult:
    out_dir: str
    weights: str  # int8 | int4
    group_size: int | None
    model_class: str
    native: bool
    why_not_native: str
    max_abs_diff: float  # reloaded export vs the in-app quantized model
    greedy_match: bool
    verified: bool
    size_bytes: int  # model.safetensors

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- GPT-2 as GPTBigCode


def _bigcode_config(spec: ModelSpec, **token_ids):
    layers = native_parts(spec)[0]["layers"]
    b = layers[0]
    act = {"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "relu": "relu", "silu": "silu"}[b.mlp.activation]
    return AutoConfig.for_model("gpt_bigcode", vocab_size=spec.vocab_size, n_positions=spec.max_seq_len,
                                n_embd=spec.d_model, n_layer=len(layers),
                                n_head=b.attention.n_heads, n_inner=b.mlp.hidden_size(spec.d_model),
                                activation_function=act, layer_norm_epsilon=b.norm.eps, multi_query=False,
                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, scale_attn_weights=True,
                                tie_word_embeddings=spec.tie_embeddings, **token_ids)


def to_bigcode(model, **token_ids):
    """A GPTBigCodeForCausalLM computing what our GPT-2-shaped model computes (fp32 weights)."""
    spec = model.config.model_spec()
    config = _bigcode_config(spec, **token_ids)
    native = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    s, H = model.state_dict(), config.n_head
    out = {"transformer.wte.weight": s["model.embed_tokens.weight"],
           "transformer.wpe.weight": s["model.embed_positions.weight"],
           "transformer.ln_f.weight": s["model.norm.weight"], "transformer.ln_f.bias": s["model.norm.bias"]}
    if not spec.tie_embeddings:
        out["lm_head.weight"] = s["lm_head.weight"]
    for i in range(config.n_layer):
        p, h = f"model.layers.{i}.", f"transformer.h.{i}."
        # c_attn's output is read per head as [q_h | k_h | v_h]: interleave our q, k, v rows head by head
        for part in ("weight", "bias"):
            q, k, v = (s[p + f"self_attn.{x}_proj.{part}"] for x in "qkv")
            out[h + f"attn.c_attn.{part}"] = torch.stack(
                [t.reshape(H, -1, *t.shape[1:]) for t in (q, k, v)], dim=1).reshape(-1, *q.shape[1:])
        for ours, theirs in (("self_attn.o_proj", "attn.c_proj"), ("mlp.up_proj", "mlp.c_fc"),
                             ("mlp.down_proj", "mlp.c_proj"), ("input_layernorm", "ln_1"),
                             ("post_attention_layernorm", "ln_2")):
            for part in ("weight", "bias"):
                out[h + f"{theirs}.{part}"] = s[p + f"{ours}.{part}"]
    missing, unexpected = native.load_state_dict(out, strict=False)
    missing = [k for k in missing if not (spec.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping to gpt_bigcode is incomplete: missing {missing}, unexpected {unexpected}")
    native.tie_weights()
    return native.eval()


# ----------------------------------------------------------------------------- export


def _fp32_source(model, family: str | None, tmp: Path, token_ids: dict) -> tuple[Path, str]:
    """Save the fp32 model that transformers will quantize; returns (folder, class name)."""
    src = tmp / "fp32"
    if family == "gpt2":
        native = to_bigcode(model, **token_ids)
    elif family:
        native = to_native(model, **token_ids)
    else:
        for k, v in token_ids.items():
            setattr(model.config, k, v)
        model.save_pretrained(src, safe_serialization=True)
        return src, type(model).__name__
    native.save_pretrained(src, safe_serialization=True)
    return src, type(native).__name__


def export_quantized(model, tokenizer, out_dir: str | Path, weights: str = "int8", group_size: int | None = None, *,
                     card: dict | None = None, overwrite: bool = False, verify: bool = True) -> QuantExportResult:
    """Write `model` (an SLMForCausalLM) quantized to int8 / int4 as a transformers folder at out_dir,
    verified in a fresh process against the in-app quantized model; nothing is written if it fails."""
    from transformers import TorchAoConfig

    from ..sharing.card import write_model_card

    if weights not in ("int8", "int4"):
        raise ExportError(f"a quantized export is int8 or int4, not {weights!r} (fp32: the plain export)")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} is not empty; choose another folder or allow overwriting")
    model = model.float().eval()
    group_size = resolve_group_size(weights, group_size)
    check_quantizable(model, weights, group_size)  # before anything is written
    reference = quantize_model(model, weights, group_size)
    spec = model.config.model_spec()
    family, why = native_family(spec)
    ids = {"bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-quant-", dir=out.parent))
    tmp = work / "out"
    try:
        src, model_class = _fp32_source(model, family, work, ids)
        qconfig = TorchAoConfig(torchao_config(weights, group_size), modules_to_not_convert=["lm_head"])
        quantized = AutoModelForCausalLM.from_pretrained(src, quantization_config=qconfig, dtype=torch.float32)
        if family:
            quantized.save_pretrained(tmp, safe_serialization=True)
        else:
            _save_custom(quantized, tmp)
        GenerationConfig(**ids, do_sample=True, temperature=0.8, top_k=50,
                         max_new_tokens=min(200, spec.max_seq_len)).save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        (tmp / "slm_spec.json").write_text(spec.to_json())
        diff, greedy = _verify(reference, tmp, remote_code=family is None) if verify else (float("nan"), False)
        ok = verify and diff <= LOGIT_TOLERANCE and greedy
        size = (tmp / "model.safetensors").stat().st_size
        result = QuantExportResult(str(out), weights, group_size, model_class, family is not None, why, diff, greedy,
                                   ok, size)
        write_model_card(tmp, spec, result, {**(card or {}),
                                             "quantization": {"weights": weights, "group_size": group_size}})
        (tmp / "export_result.json").write_text(json.dumps(result.to_dict(), indent=2))
        if verify and not ok:
            raise ExportError(f"the reloaded {weights} export differs from the in-app {weights} model (max |Δlogits| "
                              f"{diff:.2e}, greedy continuation {'identical' if greedy else 'different'}); "
                              "nothing was written")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_run_quantized(run_dir: str | Path, out_dir: str | Path, weights: str = "int8",
                         group_size: int | None = None, **kw) -> QuantExportResult:
    """Quantized export of a run folder's latest checkpoint (card facts as sharing.export.export_run)."""
    from ..training.run import open_run

    run = open_run(run_dir, load_data=False)
    evals = [r for r in run.history() if r["kind"] == "eval"]
    card = {"data": run.data_config.to_dict(), "tokenizer": run.tokenizer_config.to_dict(),
            "train": run.train_config.to_dict(), "final": evals[-1] if evals else None,
            "run_name": Path(run_dir).name, **kw.pop("card", {})}
    return export_quantized(run.load_model(), run.tokenizer, out_dir, weights, group_size, card=card, **kw)
