"""Quantized transformers exports: plain `from_pretrained` in a fresh process gives the in-app quantized
model's greedy text; GPT-2 shapes go out as GPTBigCode, free layer orders with our modeling code; bad
settings write nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slm_blocks import ModelSpec, build_model
from slm_blocks.compress.quant_export import export_quantized, export_run_quantized, to_bigcode
from slm_blocks.compress.quantize import QuantizeError, quantize_model
from slm_blocks.model.generation import SamplingConfig, generate_text
from slm_blocks.sharing.export import ExportError

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "ROMEO:\nWhat "

LOAD_AND_GENERATE = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=sys.argv[2] == "1")
tok = AutoTokenizer.from_pretrained(folder)
ids = tok(sys.argv[3], return_tensors="pt", add_special_tokens=False)
out = model.generate(**ids, max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
w = type(model.get_submodule(sys.argv[4]).weight).__name__
print(json.dumps({"text": tok.decode(out[0, ids["input_ids"].shape[1]:]), "weight": w,
                  "quant": str(model.config.quantization_config.quant_method.value)}))
"""


def _fresh(folder, remote, layer):
    proc = subprocess.run([sys.executable, "-c", LOAD_AND_GENERATE, str(folder), "1" if remote else "0", PROMPT, layer],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("weights, group", [("int8", None), ("int4", 32)])
def test_trained_model_exports_and_loads_with_plain_transformers(weights, group, trained_tiny_char, tmp_path):
    run = trained_tiny_char
    model = run.load_model()
    out = tmp_path / weights
    r = export_run_quantized(run.dir, out, weights, group)  # the run's latest checkpoint, card facts from the run
    assert r.verified and r.greedy_match and r.max_abs_diff <= 1e-4 and r.native, r
    assert r.model_class == "GPTBigCodeForCausalLM"  # GPT-2 with nn.Linear layers, which torchao quantizes
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao" and "auto_map" not in config
    assert not list(out.glob("*.py"))  # no remote code
    card = (out / "README.md").read_text()
    assert f"**{weights}** weight-only" in card and "transformers serve" in card and "vllm serve" in card
    fp32_bytes = sum(p.numel() * 4 for n, p in model.named_parameters())
    assert r.size_bytes < 0.45 * fp32_bytes  # Linear weights in one byte each, embeddings still fp32


def test_int8_export_generates_the_same_text_in_a_new_interpreter(trained_tiny_char, tmp_path):
    """Beyond export's own check (logits + token ids): text through AutoTokenizer and generate() in a new
    interpreter with plain transformers equals the in-app int8 model's text."""
    run = trained_tiny_char
    model = run.load_model()
    export_quantized(model, run.tokenizer, tmp_path / "q", "int8", verify=False)
    got = _fresh(tmp_path / "q", False, "transformer.h.0.mlp.c_fc")
    want = generate_text(quantize_model(model, "int8"), run.tokenizer, PROMPT,
                         SamplingConfig(max_new_tokens=40, temperature=0.0))
    assert got == {"text": want, "quant": "torchao", "weight": "Int8Tensor"}, (got, want)


def test_bigcode_computes_what_our_gpt2_computes(trained_tiny_char):
    model = trained_tiny_char.load_model()
    ids = trained_tiny_char.val_tokens[:64][None]
    with torch.no_grad():
        diff = (to_bigcode(model)(ids).logits - model(ids).logits).abs().max()
    assert float(diff) < 1e-4


def test_free_layer_order_exports_with_its_modeling_code(tmp_path):
    from slm_blocks.training.tokenization import build_tokenizer

    tok = build_tokenizer("byte")
    spec = ModelSpec.from_dict({"name": "free", "vocab_size": len(tok), "d_model": 64, "max_seq_len": 64, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": "alibi"},
        {"type": "attention", "attention": {"n_heads": 4, "n_kv_heads": 2}},
        {"type": "mlp", "mlp": {"activation": "silu", "gated": True, "hidden": 128}},
        {"type": "final_norm"}, {"type": "lm_head"}]})
    torch.manual_seed(0)
    model = build_model(spec, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    r = export_quantized(model, tok, tmp_path / "q", "int8")
    assert r.verified and not r.native and r.model_class == "SLMForCausalLM" and "free layer order" in r.why_not_native
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert "auto_map" in config and config["quantization_config"]["quant_method"] == "torchao"


def test_bad_settings_write_nothing(trained_tiny_char, tmp_path):
    run = trained_tiny_char
    model = run.load_model()
    with pytest.raises(QuantizeError, match="group size 48 is not supported"):
        export_quantized(model, run.tokenizer, tmp_path / "a", "int4", 48)
    with pytest.raises(ExportError, match="int8 or int4"):
        export_quantized(model, run.tokenizer, tmp_path / "b", "q8_0")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_quantized(model, run.tokenizer, tmp_path / "c", "int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"] and (tmp_path / "c" / "keep.txt").read_text() == "mine"
