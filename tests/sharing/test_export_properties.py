"""Property test: every valid block list exports, and the export loads in a fresh process with the same logits.

Hypothesis draws a batch of random valid specs around the native families (RoPE / learned / ALiBi positions,
norms, placements, GQA, biases, QK-norm, sliding windows mixed with full attention, gated MLPs, scaled and
tied embeddings, a stray standalone block). Each model takes one AdamW step (so norms and biases leave their
init values and a mix-up cannot hide), is exported, and one fresh Python process loads every folder through
the Auto classes and writes its logits. Checked for each spec: the export never fails, a spec the matcher
gives a family is exported with that native class (an inexact match would fail its weight mapping and fall
back to custom code), and the reloaded logits equal the trained model's. Derandomized like
tests/model/test_properties.py; one fresh process for the whole batch keeps it to ~20-40 s here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from slm_blocks import ModelSpec, SpecError, build_model
from slm_blocks.sharing.export import LOGIT_TOLERANCE, export_hf
from slm_blocks.sharing.native import native_family
from slm_blocks.training.tokenization import build_tokenizer

ROOT = Path(__file__).resolve().parents[2]
BATCH = int(os.environ.get("SLM_EXPORT_EXAMPLES", "10"))
SETTINGS = dict(deadline=None, max_examples=BATCH, database=None,
                derandomize=not os.environ.get("SLM_HYPOTHESIS_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
VOCAB = 259  # the byte tokenizer


FAMILY_KEYS = ["gpt2", "llama", "mistral", "qwen3", "gemma3"]
# one field changed away from a family's template: where an inexact matcher would pick the wrong class
MUTATIONS = ["qk_norm", "every", "qkv_bias", "out_bias", "mlp_bias", "norm_bias", "activation", "placement",
             "gated", "scale", "local_rope", "norm_kind", "final_eps", "free_block", "positional", "gqa", "window"]


def template(draw, family: str, C: int, T: int) -> dict:
    """A spec dict the native class of `family` computes exactly (sizes and free choices drawn)."""
    heads = draw(st.sampled_from([1, 2, 4]))
    attn = {"n_heads": heads}
    block = {"type": "transformer", "repeat": draw(st.integers(1, 3)), "attention": attn}
    pos = {"type": "positional", "kind": "rope", "rope_theta": draw(st.sampled_from([10000.0, 500.0]))}
    embedding = {"type": "embedding"}
    if family == "gpt2":
        pos = {"type": "positional", "kind": "learned"}
        attn.update(qkv_bias=True, out_bias=True)
        block["mlp"] = {"activation": draw(st.sampled_from(["gelu_tanh", "gelu", "relu", "silu"])), "bias": True,
                        "hidden": draw(st.sampled_from([None, 48]))}
        block["norm"] = {"kind": "layernorm", "bias": True, "eps": draw(st.sampled_from([1e-5, 1e-6]))}
    else:
        if heads > 1 and draw(st.booleans()):
            attn["n_kv_heads"] = draw(st.sampled_from([h for h in (1, 2) if heads % h == 0]))
        if draw(st.integers(0, 2)) == 0:
            attn["head_dim"] = draw(st.sampled_from([4, 8]))
        block["mlp"] = {"activation": "gelu_tanh" if family == "gemma3" else "silu", "gated": True,
                        "hidden": draw(st.sampled_from([None, 48]))}
        block["norm"] = {"kind": "rmsnorm", "eps": draw(st.sampled_from([1e-5, 1e-6]))}
        if family == "llama" and draw(st.booleans()):
            attn.update(qkv_bias=True, out_bias=True)
        if family == "mistral":
            attn["sliding_window"] = draw(st.sampled_from([4, 8]))
        if family in ("qwen3", "gemma3"):
            attn["qk_norm"] = True
            if draw(st.booleans()):
                attn["sliding_window"] = draw(st.sampled_from([4, 8]))
                if draw(st.booleans()):
                    block["full_attention_every"] = draw(st.sampled_from([2, 3]))
        if family == "gemma3":
            block["norm_placement"] = "sandwich"
            embedding["scale"] = True
            if draw(st.booleans()):
                pos["local_rope_theta"] = 1000.0
    layers = [block] + ([dict(block, repeat=1)] if draw(st.integers(0, 3)) == 0 else [])
    return {"vocab_size": VOCAB, "d_model": C, "max_seq_len": T, "tie_embeddings": draw(st.booleans()),
            "blocks": [embedding, pos, *layers, {"type": "final_norm", "norm": dict(block["norm"])},
                       {"type": "lm_head"}]}


def mutate(draw, data: dict, how: str) -> None:
    """Change one thing of a template (in place)."""
    blocks = data["blocks"]
    layers = [b for b in blocks if b["type"] == "transformer"]
    a, m, n = layers[0]["attention"], layers[0]["mlp"], layers[0]["norm"]
    if how == "qk_norm":
        a["qk_norm"] = not a.get("qk_norm", False)
    elif how == "every":  # sliding-window layers mixed with full ones (the case once mapped to Qwen3 without QK-norm)
        a["sliding_window"] = a.get("sliding_window") or 4
        layers[0]["full_attention_every"] = 2
        layers[0]["repeat"] = max(2, layers[0]["repeat"])
    elif how == "window":
        a["sliding_window"] = None if a.get("sliding_window") else 8
    elif how in ("qkv_bias", "out_bias"):
        a[how] = not a.get(how, False)
    elif how == "mlp_bias":
        m["bias"] = not m.get("bias", False)
    elif how == "norm_bias":
        n.update(kind="layernorm", bias=not n.get("bias", False))
    elif how == "activation":
        m["activation"] = draw(st.sampled_from([x for x in ("silu", "gelu_tanh", "gelu", "relu")
                                                if x != m["activation"]]))
    elif how == "placement":
        layers[0]["norm_placement"] = draw(st.sampled_from(["pre", "sandwich", "post"]))
    elif how == "gated":
        m["gated"] = not m.get("gated", False)
    elif how == "scale":
        blocks[0]["scale"] = not blocks[0].get("scale", False)
    elif how == "local_rope" and blocks[1].get("kind") == "rope":
        blocks[1]["local_rope_theta"] = None if blocks[1].get("local_rope_theta") else 2000.0
    elif how == "norm_kind":
        n["kind"] = "layernorm" if n["kind"] == "rmsnorm" else "rmsnorm"
        n["bias"] = False
    elif how == "final_eps":
        blocks[-2]["norm"] = dict(n, eps=1e-3)
        return
    elif how == "free_block":
        blocks.insert(len(blocks) - 2, {"type": "mlp", "mlp": dict(m), "norm": dict(n)})
    elif how == "positional":
        blocks[1] = {"type": "positional", "kind": draw(st.sampled_from(["learned", "rope", "alibi", "sinusoidal"]))}
    elif how == "gqa":
        a.update(n_heads=4, n_kv_heads=2, head_dim=None)
    for b in layers[1:]:
        b.update({k: v for k, v in layers[0].items() if k != "repeat"})
    blocks[-2]["norm"] = dict(n)


@st.composite
def specs(draw):
    """A family's template, half the time with one field changed (invalid results are redrawn)."""
    family = draw(st.sampled_from(FAMILY_KEYS))
    data = template(draw, family, draw(st.sampled_from([16, 32])), draw(st.sampled_from([24, 32])))
    if draw(st.booleans()):
        mutate(draw, data, draw(st.sampled_from(MUTATIONS)))
    try:
        return ModelSpec.from_dict(data)
    except SpecError:
        return draw(specs())


# the block list the attack found: RoPE with a sliding window on some layers and no QK-norm (once matched to
# Qwen3, whose QK-norm weights it lacks: "weight mapping ... is incomplete")
REPORTED = ModelSpec.from_dict({
    "vocab_size": VOCAB, "d_model": 32, "max_seq_len": 32, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": "rope"},
        {"type": "transformer", "repeat": 2, "attention": {"n_heads": 4, "sliding_window": 8},
         "mlp": {"activation": "silu", "gated": True}, "norm": {"kind": "rmsnorm"}, "full_attention_every": 2},
        {"type": "final_norm", "norm": {"kind": "rmsnorm"}}, {"type": "lm_head"}]})


def trained_once(spec: ModelSpec, seed: int):
    """The model after one AdamW step on random tokens (weights off their init values)."""
    torch.manual_seed(seed)
    model = build_model(spec)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    ids = torch.randint(0, spec.vocab_size, (2, spec.max_seq_len))
    model(ids, labels=ids, use_cache=False).loss.backward()
    opt.step()
    return model.eval()


LOADER = textwrap.dedent("""
    import sys, json
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    for folder in json.loads(sys.argv[1]):
        remote = json.load(open(folder + "/export_result.json"))["native"] is False
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote, dtype=torch.float32).eval()
        AutoTokenizer.from_pretrained(folder)
        ids = load_file(folder + "/../" + folder.rsplit("/", 1)[1] + ".ids.safetensors")["ids"]
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits.float()
        save_file({"logits": logits.contiguous()}, folder + "/../" + folder.rsplit("/", 1)[1] + ".out.safetensors")
""")


def test_every_valid_block_list_exports_and_loads_in_a_fresh_process(tmp_path):
    import json

    torch.set_num_threads(1)
    tok = build_tokenizer("byte")
    cases = []

    @settings(**SETTINGS)
    @given(spec=specs())
    @example(spec=REPORTED)
    def export_one(spec):
        i = len(cases)
        family, _ = native_family(spec)
        note(f"family {family}: {spec.to_json(indent=None)}")
        model = trained_once(spec, seed=i)
        result = export_hf(model, tok, tmp_path / f"m{i}", verify=False)  # verified below, in one fresh process
        assert result.native == (family is not None), (family, result.why_not_native)
        ids = torch.randint(0, spec.vocab_size, (2, spec.max_seq_len), generator=torch.Generator().manual_seed(i))
        save_file({"ids": ids}, tmp_path / f"m{i}.ids.safetensors")
        with torch.no_grad():
            cases.append((i, family, model(ids, use_cache=False).logits.float(), result.model_class, spec))

    export_one()
    kinds = {c[1] for c in cases}
    assert len(cases) >= BATCH - 1 and None in kinds and len(kinds - {None}) >= 2, [c[1] for c in cases]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", LOADER, json.dumps([str(tmp_path / f"m{i}") for i, *_ in cases])],
                          capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i, family, ref, cls, spec in cases:
        got = load_file(tmp_path / f"m{i}.out.safetensors")["logits"]
        diff = float((got - ref).abs().max())
        assert diff <= LOGIT_TOLERANCE, (f"{family or 'custom code'} export ({cls}) of {spec.to_json(indent=None)}: "
                                         f"max |Δlogits| {diff:.2e}")
