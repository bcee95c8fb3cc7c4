"""GGUF for the families beyond the plain transformer: Qwen3-MoE and LFM2 round-trip through transformers' GGUF
reader (and, when llama-cpp-python is installed, run in llama.cpp like the model); the families whose llama.cpp
architecture transformers cannot read (Mixtral, Mamba2, Bamba) are refused with that reason, as are Qwen3-MoE
shapes llama.cpp or the reader would misread."""

import pytest
import torch

from slm_blocks import build_model, load_preset
from slm_blocks.compress.gguf_export import gguf_support, rounded_model, write_gguf
from slm_blocks.compress.gguf_read import CHECKED_ONLY, SUPPORTED
from tests.compress.test_gguf import TEXT, _roundtrip
from tests.model.test_mixers import SWIGLU, attention, model_of, spec_of

QWEN3MOE = spec_of(attention(repeat=2, attention={"qk_norm": True}, mlp={**SWIGLU, "hidden": 768},
                             experts={"n_experts": 4, "top_k": 2}))
LFM2 = spec_of({"type": "short_conv", "mlp": SWIGLU}, attention(attention={"qk_norm": True}),
               {"type": "short_conv", "mlp": SWIGLU})


@pytest.fixture(scope="module")
def char_tok():
    from slm_blocks.training.tokenization import build_tokenizer

    return build_tokenizer("char", TEXT)


@pytest.mark.parametrize("name, arch", [("qwen3-moe", "qwen3moe"), ("lfm2", "lfm2")])
def test_presets_roundtrip_through_transformers(name, arch, char_tok, tmp_path, one_thread):
    torch.manual_seed(0)
    model = build_model(load_preset(name).copy(vocab_size=len(char_tok))).eval()
    r, meta, diff, same_greedy, same_tok = _roundtrip(model, char_tok, tmp_path / "m.gguf", "q8_0",
                                                      archs=SUPPORTED + CHECKED_ONLY)
    assert diff <= 1e-4 and same_greedy and same_tok, (name, diff, same_greedy, same_tok)
    assert meta["general.architecture"] == arch
    if arch == "qwen3moe":
        assert (meta["qwen3moe.expert_count"], meta["qwen3moe.expert_used_count"]) == (4, 2)
        assert meta["__tensors__"]["blk.0.ffn_gate_exps.weight"][1] == (256, 768, 4)  # ggml order: (C, I, E)
    else:  # llama.cpp tells attention from convolution layers by their kv heads
        assert meta["lfm2.attention.head_count_kv"] == [0, 0, 2, 0, 0, 2, 0, 0]
        assert meta["__tensors__"]["blk.0.shortconv.conv.weight"][0] == "F32"


@pytest.mark.parametrize("name, reason", [
    ("mixtral", "loads as a dense Llama"), ("mamba2", "no Mamba2"), ("bamba", "granitehybrid")])
def test_families_transformers_cannot_read_are_refused(name, reason):
    arch, why = gguf_support(load_preset(name))
    assert arch is None and reason in why and "transformers export" in why


def test_qwen3_moe_shapes_the_file_cannot_hold_are_refused():
    dense = spec_of(attention(attention={"qk_norm": True}), attention(attention={"qk_norm": True},
                    mlp={**SWIGLU, "hidden": 768}, experts={"n_experts": 4, "top_k": 2}))
    assert "experts in every layer" in gguf_support(dense)[1]
    narrow = spec_of(attention(attention={"qk_norm": True}, experts={"n_experts": 4, "top_k": 2}))
    assert "set the MLP hidden width to 768" in gguf_support(narrow)[1]


@pytest.mark.parametrize("spec", [QWEN3MOE, LFM2], ids=["qwen3moe", "lfm2"])
def test_llama_cpp_runs_the_file_like_the_model(spec, char_tok, tmp_path):
    """llama.cpp itself on the file vs our model holding the file's f16 weights (llama.cpp rounds activations)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    model = model_of(spec.copy(vocab_size=len(char_tok)))
    write_gguf(model, char_tok, tmp_path / "m.gguf", "f16")
    ref = rounded_model(model, "f16")
    ids = char_tok("ROMEO:\nWhat say you", add_special_tokens=False)["input_ids"]
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    llm.eval(ids)
    got = torch.tensor(llm.scores[: len(ids)])
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
    assert float((got - want).abs().max()) < 0.01 and torch.equal(got.argmax(-1), want.argmax(-1))
