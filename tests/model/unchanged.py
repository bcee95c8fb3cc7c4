"""What the engine computes for a fixed set of specs, reduced to hashes: initial weights, logits (plain, padded,
explain mode), greedy and sampled generation (the one-token step and transformers' generate), the estimate and
the per-block tensors, the native family and its weights, the exported safetensors bytes, the GGUF tensors and
file, and pruning. `tests/model/unchanged.json` holds these figures as the code computed them before block types
became plug-ins (issue 22); `test_unchanged.py` recomputes them and expects every one identical.

    python tests/model/unchanged.py        rewrites unchanged.json (only when a change is meant to alter outputs)
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).with_name("unchanged.json")
SHAKESPEARE = ROOT.parent / "shared/data/tinyshakespeare.txt"
PRESETS = ["tiny-char", "gpt2", "llama", "mistral", "qwen3", "gemma3"]


# ----------------------------------------------------------------------------- the specs (from the model tests)


def _small(positional="rope", blocks=None, embed_scale=False, **layer) -> dict:  # tests/model/test_decode.py's
    attention = {"n_heads": 4, **layer.pop("attention", {})}
    block = {"type": "transformer", "repeat": 2, "attention": attention,
             "mlp": {"activation": "silu", "gated": True, "hidden": 48}, **layer}
    return {"vocab_size": 40, "d_model": 32, "max_seq_len": 40, "blocks": [
        {"type": "embedding", "scale": embed_scale}, {"type": "positional", "kind": positional},
        *(blocks or [block]), {"type": "final_norm"}, {"type": "lm_head"}]}


def specs() -> dict[str, dict]:
    from slm_blocks import load_preset
    from tests.model.test_estimate import _every_block_kind
    from tests.model.test_model import OPTIONS, tiny as _tiny

    out = {f"preset-{n}": load_preset(n).to_dict() for n in PRESETS}
    out.update(OPTIONS)  # tests/model/test_model.py's block options and free orders
    out.update({
        "post-parallel": _tiny(residual="parallel", norm_placement="post"),
        "alibi-gqa-window": _small("alibi", attention={"n_kv_heads": 2, "sliding_window": 6}),
        "rope-mqa-window-qknorm": _small(attention={"n_kv_heads": 1, "sliding_window": 5, "qk_norm": True}),
        "qknorm-no-positions": _small("none", attention={"qk_norm": True, "qkv_bias": True, "out_bias": True}),
        "sinusoidal-scaled": _small("sinusoidal", embed_scale=True),
        "post-norm-layernorm": _small("learned", norm_placement="post", norm={"kind": "layernorm", "bias": True}),
        "classic-post": _small(norm_placement="classic_post"),
        "decode-sandwich-parallel": _small(norm_placement="sandwich", residual="parallel"),
        "separate-layers": _small(blocks=[
            {"type": "attention", "attention": {"n_heads": 2}}, {"type": "mlp", "mlp": {"activation": "gelu"}},
            {"type": "norm"}, {"type": "attention", "attention": {"n_heads": 4, "n_kv_heads": 2}, "norm": None},
            {"type": "mlp", "mlp": {"activation": "relu", "bias": True}, "norm": None}]),
        "every-kind": _every_block_kind().to_dict(),
        "untied-gpt2-shape": {**load_preset("gpt2").to_dict(), "tie_embeddings": False, "max_seq_len": 32},
    })
    return out


# ----------------------------------------------------------------------------- hashing


def digest(*tensors_or_bytes) -> str:
    h = hashlib.sha256()
    for t in tensors_or_bytes:
        if isinstance(t, torch.Tensor):
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            t = t.detach().contiguous().cpu().reshape(-1)
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(t, (bytes, bytearray)):
            h.update(t)
        else:
            h.update(json.dumps(t, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def state_digest(state: dict) -> str:
    return digest(*[x for k, v in sorted(state.items()) for x in (k, v)])


# ----------------------------------------------------------------------------- the record of one spec


def _tokenizer():
    from slm_blocks.training.tokenization import build_tokenizer

    return build_tokenizer("char", SHAKESPEARE.read_text(encoding="utf-8")[:20000])


def model_of(spec):
    from slm_blocks import build_model

    torch.manual_seed(0)
    model = build_model(spec).eval()
    init = state_digest(model.state_dict())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norms start at weight 1, bias 0 and biases at 0: make them matter
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith(".bias"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model, init


def record(name: str, data: dict, tokenizer=None) -> dict:
    from slm_blocks import ModelSpec, estimate
    from slm_blocks.model.estimate import block_costs
    from slm_blocks.model.generation import SamplingConfig, stream_tokens

    spec = ModelSpec.from_dict(data)
    out: dict = {"summary": spec.summary()}
    out["plan"] = [[spec.blocks.index(b), None if a is None else json.dumps(a.__dict__, sort_keys=True), w]
                   for b, a, w in spec.layer_plan()]
    out["estimate"] = [estimate(spec).to_dict(), estimate(spec, batch_size=3, seq_len=7, dtype="bfloat16").to_dict()]
    out["block_costs"] = digest([[c.index, c.type, [[n, list(s)] for n, s in c.tensors], c.params]
                                 for c in block_costs(spec)])

    model, out["init"] = model_of(spec)
    V, T = spec.vocab_size, min(spec.max_seq_len, 20)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, V, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad():
        plain = model(ids, use_cache=False)
        padded = model(ids, attention_mask=mask, use_cache=False)
        explained = model(ids, use_cache=False, output_attentions=True)
        labels = model(ids, labels=ids, use_cache=False)
    out["logits"] = digest(plain.logits)
    out["padded"] = digest(padded.logits)
    out["explained"] = digest(explained.logits, *explained.attentions)
    out["loss"] = digest(labels.loss)

    prompt = ids[:1, :4]
    n = min(spec.max_seq_len, 40) - 4
    with torch.no_grad():
        hf = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                            do_sample=False, pad_token_id=0)
    out["generate"] = hf[0, 4:].tolist()
    out["greedy"] = list(stream_tokens(model, prompt, SamplingConfig(max_new_tokens=n, temperature=0)))
    out["sampled"] = list(stream_tokens(model, prompt, SamplingConfig(max_new_tokens=n, temperature=0.9, top_k=20,
                                                                      top_p=0.95, repetition_penalty=1.2, seed=3)))
    long = 2 * spec.max_seq_len + 5  # past the context: crop and re-prefill
    out["long"] = digest(list(stream_tokens(model, prompt, SamplingConfig(max_new_tokens=long, temperature=0))))
    model.train()
    torch.manual_seed(4)
    out["train_loss"] = digest(model(ids, labels=ids, use_cache=False).loss)  # dropout live where the spec has it
    model.eval()

    out.update(_sharing(spec, model, tokenizer))
    out.update(_prune(spec, model, ids))
    return out


def _sharing(spec, model, tokenizer) -> dict:
    from slm_blocks.compress.gguf_export import GGUFError, gguf_support, gguf_tensors, write_gguf
    from slm_blocks.sharing.export import export_hf
    from slm_blocks.sharing.native import native_family, native_state_dict, to_native

    out: dict = {}
    family, why = native_family(spec)
    out["native"] = [family, why]
    if family:
        out["native_state"] = state_digest(native_state_dict(spec, family, model.state_dict()))
        out["native_config"] = digest(to_native(model).config.to_dict())
        if family == "gpt2":
            from slm_blocks.compress.quant_export import to_bigcode

            out["bigcode_state"] = state_digest(to_bigcode(model).state_dict())
    with tempfile.TemporaryDirectory() as d:
        export_hf(copy.deepcopy(model), tokenizer, Path(d) / "hf", verify=False)
        out["export_safetensors"] = digest((Path(d) / "hf" / "model.safetensors").read_bytes())
        out["export_config"] = sorted(json.loads((Path(d) / "hf" / "config.json").read_text()))
    arch, why = gguf_support(spec)
    out["gguf"] = [arch, why]
    if arch:
        out["gguf_tensors"] = state_digest(gguf_tensors(copy.deepcopy(model), arch))
        sized, _ = model_of(spec.copy(vocab_size=len(tokenizer)))  # a GGUF file holds the tokenizer: same vocab
        with tempfile.TemporaryDirectory() as d:
            for quant in ("f16", "q8_0"):
                try:
                    write_gguf(copy.deepcopy(sized), tokenizer, Path(d) / f"m-{quant}.gguf", quant)
                    out[f"gguf_{quant}"] = digest((Path(d) / f"m-{quant}.gguf").read_bytes())
                except GGUFError as e:
                    out[f"gguf_{quant}"] = f"refused: {e}"
    return out


def _prune(spec, model, ids) -> dict:
    from slm_blocks.grow import prune as P

    out: dict = {"droppable": P.droppable(spec), "owners": P._layer_blocks(spec),
                 "head_options": [sorted(o.items()) for o in P._head_options(spec)]}
    if not out["owners"]:
        return out
    scores = P.importance(model, [ids])
    out["importance"] = digest(scores["layer"], sorted((k, v.tolist()) for k, v in scores["mlp"].items()),
                               sorted((k, v.tolist()) for k, v in scores["heads"].items()))
    plans = {}
    for drop, keep, heads in ((0, 0.5, None), (1, 1.0, None), (1, 0.75, "min")):
        heads_keep = None
        if heads == "min":
            attn = P._attention_blocks(spec)
            if not attn:
                continue
            heads_keep = max(a.n_heads // a.kv_heads() for a in attn.values())
        problems = P.check_options(spec, drop, keep, heads_keep)
        key = f"{drop}-{keep}-{heads_keep}"
        if problems:
            plans[key] = [str(p) for p in problems]
            continue
        plan = P.explicit_plan(spec, scores, drop, keep, heads_keep)
        small = P.pruned_spec(spec, plan)
        plans[key] = {"plan": plan.describe(spec), "spec": digest(small.to_dict()),
                      "state": state_digest(P.pruned_state(model, spec, plan, scores))}
    out["prune"] = plans
    return out


def compute(names=None) -> dict:
    tok = _tokenizer()
    all_specs = specs()
    return {name: {"spec": data, **record(name, data, tok)} for name, data in all_specs.items()
            if names is None or name in names}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(1)
    FIXTURE.write_text(json.dumps(compute(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}")
