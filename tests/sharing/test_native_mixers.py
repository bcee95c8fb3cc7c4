"""Mixtures of experts, Mamba2, LFM2 and the Bamba hybrid in their native transformers classes: logits within 1e-5
of ours with the same weights (fp32), the block patterns each family expresses (Qwen3-MoE's mlp_only_layers, LFM2's
layer_types, Bamba's attention layer indices), the reasons for the compositions none expresses, and the export:
reloaded in a fresh process through the Auto classes with the same logits and greedy text."""

import pytest
import torch

from slm_blocks import load_preset
from slm_blocks.sharing.native import native_family, to_native
from tests.model.test_mixers import MAMBA, SWIGLU, attention, model_of, spec_of

PRESETS = {"mixtral": "MixtralForCausalLM", "qwen3-moe": "Qwen3MoeForCausalLM", "mamba2": "Mamba2ForCausalLM",
           "lfm2": "Lfm2ForCausalLM", "bamba": "BambaForCausalLM"}


def assert_same_logits(model, native, T=80):
    ids = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, theirs = model(ids, use_cache=False).logits, native(ids, use_cache=False).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    return float((theirs - ours).abs().max())


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_logits_match_native_class(preset):
    model = model_of(load_preset(preset))
    native = to_native(model)
    assert type(native).__name__ == PRESETS[preset]
    assert_same_logits(model, native, T=80)  # past a Mamba2 chunk of 64 tokens


def test_qwen3_moe_dense_layers_are_mlp_only_layers():
    moe = {"n_experts": 4, "top_k": 2, "norm_topk": False}
    qk = {"qk_norm": True}
    spec = spec_of(attention(attention=qk, mlp={**SWIGLU, "hidden": 40}), attention(repeat=2, attention=qk,
                   experts=moe), attention(attention=qk, mlp={**SWIGLU, "hidden": 40}), tie_embeddings=False)
    model = model_of(spec)
    native = to_native(model)
    assert native.config.mlp_only_layers == [0, 3] and native.config.moe_intermediate_size == 24
    assert native.config.intermediate_size == 40 and native.config.norm_topk_prob is False
    assert_same_logits(model, native)


def test_lfm2_and_bamba_take_any_layer_pattern():
    conv = {"type": "short_conv", "mlp": SWIGLU}
    qk = {"qk_norm": True}
    spec = spec_of(attention(attention=qk), {**conv, "repeat": 3}, attention(attention=qk))
    model = model_of(spec)
    native = to_native(model)
    assert native.config.layer_types == ["full_attention", "conv", "conv", "conv", "full_attention"]
    assert_same_logits(model, native)

    mamba = {"type": "mamba2", "mamba": MAMBA, "mlp": SWIGLU}
    spec = spec_of(attention(attention={"n_kv_heads": None}), {**mamba, "repeat": 2}, attention(repeat=2,
                   attention={"n_kv_heads": None}))
    model = model_of(spec)
    native = to_native(model)
    assert native.config.layers_block_type == ["full_attention", "linear_attention", "linear_attention",
                                               "full_attention", "full_attention"]
    assert_same_logits(model, native)


@pytest.mark.parametrize("layers, positional, reason", [
    ([{"type": "moe"}], "rope", "standalone mixture-of-experts"),
    ([attention(experts={"n_experts": 4, "top_k": 2, "shared_hidden": 8})], "rope", "no shared expert"),
    ([attention(experts={"n_experts": 4, "top_k": 2}), attention()], "rope", "Qwen3-MoE, which allows dense layers"),
    ([{"type": "mamba2", "mamba": MAMBA}], "rope", "Mamba2 has no positions"),
    ([{"type": "mamba2", "mamba": MAMBA, "mlp": SWIGLU}, {"type": "short_conv", "mlp": SWIGLU}], "rope",
     "this mix of layer types"),
    ([{"type": "short_conv", "mlp": SWIGLU}, attention()], "rope", "LFM2's attention layers have QK-norm"),
    ([{"type": "mamba2", "mamba": MAMBA, "mlp": SWIGLU}, attention(experts={"n_experts": 4, "top_k": 2})], "rope",
     "only in transformer blocks"),
    ([{"type": "short_conv", "mlp": {**SWIGLU, "hidden": 16}}, {"type": "short_conv", "mlp": SWIGLU}], "rope",
     "different settings"),
])
def test_compositions_without_a_native_class_say_why(layers, positional, reason):
    family, why = native_family(spec_of(*layers, positional=positional))
    assert family is None and reason in why


# ----------------------------------------------------------------------------- export in a fresh process


@pytest.fixture(scope="module")
def tokenizer():
    from slm_blocks.training.tokenization import build_tokenizer

    return build_tokenizer("char", "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 4)


EXPORTS = {
    "mixtral": (spec_of(attention(repeat=2, experts={"n_experts": 4, "top_k": 2})), "MixtralForCausalLM"),
    "qwen3_moe": (spec_of(attention(attention={"qk_norm": True}), attention(attention={"qk_norm": True}, experts={
        "n_experts": 4, "top_k": 1})), "Qwen3MoeForCausalLM"),
    "mamba2": (spec_of({"type": "mamba2", "repeat": 2, "mamba": MAMBA}, positional="none"), "Mamba2ForCausalLM"),
    "lfm2": (spec_of({"type": "short_conv", "mlp": SWIGLU}, attention(attention={"qk_norm": True})),
             "Lfm2ForCausalLM"),
    "bamba": (spec_of({"type": "mamba2", "mamba": MAMBA, "mlp": SWIGLU}, attention(attention={"n_kv_heads": None})),
              "BambaForCausalLM"),
    "custom-hybrid": (spec_of({"type": "mamba2", "mamba": MAMBA, "mlp": SWIGLU}, attention(experts={
        "n_experts": 4, "top_k": 2}), {"type": "short_conv"}), "SLMForCausalLM"),
}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_reloads_in_a_fresh_process_with_the_same_text(name, tokenizer, tmp_path):
    from slm_blocks.sharing.export import export_hf

    spec, cls = EXPORTS[name]
    model = model_of(spec.copy(vocab_size=len(tokenizer)))
    result = export_hf(model, tokenizer, tmp_path / name)
    assert result.model_class == cls and result.native == (cls != "SLMForCausalLM")
    assert result.verified and result.greedy_match and result.max_abs_diff <= 1e-5, result
    from slm_blocks.sharing.importer import import_hf  # reopened to keep training or fine-tune

    again, _, spec_again = import_hf(tmp_path / name)
    ids = torch.randint(0, len(tokenizer), (1, 20))
    with torch.no_grad():
        assert spec_again == model.config.model_spec() and torch.equal(again(ids).logits, model(ids).logits)
