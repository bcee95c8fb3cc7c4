"""Parity with native transformers classes: the same weights give the same logits (fp32, 1e-5)."""

import pytest
import torch

from slm_blocks import ModelSpec, build_model, load_preset
from slm_blocks.sharing.native import native_family, to_native

EXPECTED = {"gpt2": "GPT2LMHeadModel", "tiny-char": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
            "mistral": "MistralForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_preset_logits_match_native_class(preset):
    torch.manual_seed(0)
    spec = load_preset(preset)
    model = build_model(spec).eval()
    with torch.no_grad():  # move norms away from their identity init so a norm mix-up cannot hide
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    native = to_native(model)
    assert type(native).__name__ == EXPECTED[preset]
    ids = torch.randint(0, spec.vocab_size, (2, spec.max_seq_len))  # longer than mistral/gemma3 windows
    with torch.no_grad():
        torch.testing.assert_close(native(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def test_untied_llama_with_bias_matches():
    spec = load_preset("llama").to_dict()
    spec["tie_embeddings"] = False
    spec["blocks"][2]["attention"].update(qkv_bias=True, out_bias=True)
    model = build_model(spec).eval()
    native = to_native(model)
    ids = torch.randint(0, 4096, (1, 50))
    with torch.no_grad():
        torch.testing.assert_close(native(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("change, reason", [
    (lambda s: s["blocks"][1].update(kind="alibi"), "ALiBi"),
    (lambda s: s["blocks"][2].update(residual="parallel"), "parallel"),
    (lambda s: s["blocks"].insert(3, {"type": "mlp"}), "free layer order"),
    (lambda s: s["blocks"][1].update(kind="sinusoidal"), "sinusoidal"),
])
def test_unmatched_specs_say_why(change, reason):
    spec = load_preset("llama").to_dict()
    change(spec)
    family, why = native_family(ModelSpec.from_dict(spec))
    assert family is None and reason in why
    with pytest.raises(ValueError, match=reason):
        to_native(build_model(spec))
