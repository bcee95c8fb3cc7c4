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


def _tiny(**attention):
    from slm_blocks.training.tokenization import build_tokenizer

    tok = build_tokenizer("byte")
    spec = ModelSpec.from_dict({"vocab_size": len(tok), "d_model": 32, "max_seq_len": 32, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": "rope"},
        {"type": "transformer", "repeat": 2, "attention": {"n_heads": 4, **attention},
         "mlp": {"activation": "silu", "gated": True}, "norm": {"kind": "rmsnorm"}},
        {"type": "final_norm", "norm": {"kind": "rmsnorm"}}, {"type": "lm_head"}]})
    torch.manual_seed(0)
    return build_model(spec).eval(), tok


def test_sliding_window_on_some_layers_without_qk_norm_is_custom_code():
    """The attack's block list: Qwen3 mixes sliding and full layers but always has QK-norm weights."""
    model, _ = _tiny(sliding_window=8)
    spec = model.config.model_spec().to_dict()
    spec["blocks"][2]["full_attention_every"] = 2
    family, why = native_family(ModelSpec.from_dict(spec))
    assert family is None and "QK-norm" in why
    spec["blocks"][2]["attention"]["qk_norm"] = True
    assert native_family(ModelSpec.from_dict(spec))[0] == "qwen3"


def test_a_native_mapping_failure_falls_back_to_custom_code(tmp_path, monkeypatch):
    import slm_blocks.sharing.export as export
    import slm_blocks.sharing.native as native

    model, tok = _tiny(qk_norm=True)  # Qwen3's blocks; pretend the matcher said Llama (no q_norm / k_norm)
    monkeypatch.setattr(native, "native_family", lambda spec: ("llama", ""))
    monkeypatch.setattr(export, "native_family", lambda spec: ("llama", ""))
    r = export.export_hf(model, tok, tmp_path / "out", verify=False)
    assert not r.native and r.model_class == "SLMForCausalLM"
    assert "Llama export did not reproduce this model" in r.why_not_native and "incomplete" in r.why_not_native
    assert "did not reproduce" in (tmp_path / "out" / "README.md").read_text()  # the reason is in the card
    assert "auto_map" in (tmp_path / "out" / "config.json").read_text()


def test_a_native_verification_failure_falls_back_to_custom_code(tmp_path, monkeypatch):
    """The native class loads but computes something else: the verified custom-code export is written instead."""
    import slm_blocks.sharing.native as native
    from slm_blocks.sharing.export import export_hf

    model, tok = _tiny()
    mapped = native.native_state_dict

    def off_by_a_little(spec, family, state):
        out = mapped(spec, family, state)
        out["model.norm.weight"] = out["model.norm.weight"] * 1.5
        return out

    monkeypatch.setattr(native, "native_state_dict", off_by_a_little)
    r = export_hf(model, tok, tmp_path / "out")
    assert r.verified and not r.native and r.model_class == "SLMForCausalLM", r
    assert "logits differ" in r.why_not_native
    assert "logits differ" in (tmp_path / "out" / "README.md").read_text()
