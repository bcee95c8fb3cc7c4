"""int8 / int4 weight-only quantization of a trained model: quality bounds, generation, bad settings."""

import math

import pytest
import torch

from slm_blocks import build_model, load_preset
from slm_blocks.compress.quantize import QuantizeError, quantize_model, weights_of
from slm_blocks.compress.table import heldout_loss
from slm_blocks.model.generation import SamplingConfig, generate_text

INT8_BOUND = 0.01  # relative held-out loss increase allowed for int8 (per row)
INT4_BOUND = 0.05  # ... and for int4 (groups of 32)


@pytest.fixture(scope="module")
def losses(trained_tiny_char):
    run = trained_tiny_char
    model = run.load_model()
    torch.set_num_threads(1)
    out = {w: heldout_loss(quantize_model(model, w), run.val_tokens, run.seq_len, windows=32)
           for w in ("fp32", "bf16", "int8", "int4")}
    return out


def test_trained_fixture_has_learned(trained_tiny_char, losses):
    assert losses["fp32"] < 2.6, losses  # uniform over 65 characters: 4.17; character frequencies alone: ~3.3


def test_int8_loss_within_one_percent(losses):
    assert abs(losses["int8"] / losses["fp32"] - 1) < INT8_BOUND, losses


def test_int4_loss_within_bound(losses):
    assert abs(losses["int4"] / losses["fp32"] - 1) < INT4_BOUND, losses
    assert losses["int4"] != losses["fp32"]  # it really is quantized


def test_bf16_close(losses):
    assert abs(losses["bf16"] / losses["fp32"] - 1) < INT8_BOUND, losses


def test_quantized_copy_leaves_original_and_generates(trained_tiny_char):
    run = trained_tiny_char
    model = run.load_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q8 = quantize_model(model, "int8")
    q4 = quantize_model(model, "int4", 64)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(q8.model.layers[0].self_attn.q_proj.weight).__name__ == "Int8Tensor"
    assert type(q4.model.layers[0].mlp.down_proj.weight).__name__ == "IntxUnpackedToInt8Tensor"
    assert type(q8.lm_head.weight) is torch.nn.Parameter  # tied to the embedding, kept fp32
    assert weights_of(q4) == {"weights": "int4", "group_size": 64} and weights_of(model)["weights"] == "fp32"
    cfg = SamplingConfig(max_new_tokens=40, temperature=0.0)
    texts = {w: generate_text(m, run.tokenizer, "ROMEO:\n", cfg) for w, m in (("fp32", model), ("int8", q8))}
    assert len(texts["int8"]) > 10 and texts["int8"].strip()
    # sampling with a seed works on quantized weights too
    assert generate_text(q4, run.tokenizer, "KING", SamplingConfig(max_new_tokens=20, seed=3))


def test_group_size_that_does_not_divide_is_refused_with_the_fix():
    model = build_model(load_preset("llama"))  # MLP hidden 688 = 16 x 43
    with pytest.raises(QuantizeError) as e:
        quantize_model(model, "int4")
    msg = str(e.value)
    assert "688" in msg and "mlp.down_proj" in msg and "group size 16" in msg, msg
    q = quantize_model(model, "int4", 16)  # the suggested fix works
    assert weights_of(q)["group_size"] == 16
    with pytest.raises(QuantizeError, match="group size 48 is not supported"):
        quantize_model(model, "int8", 48)
    with pytest.raises(QuantizeError, match="choose one of fp32, bf16, int8, int4"):
        quantize_model(model, "int3")


def test_group_size_error_when_nothing_fits():
    from slm_blocks import ModelSpec

    spec = load_preset("tiny-char").to_dict()
    spec["d_model"] = 72  # 72 = 8 x 9: no group size of 16 or more divides it
    spec["blocks"][2]["attention"]["n_heads"] = 4
    spec["blocks"][2]["mlp"]["hidden"] = 144
    model = build_model(ModelSpec.from_dict(spec))
    with pytest.raises(QuantizeError) as e:
        quantize_model(model, "int4")
    assert "multiples of 32" in str(e.value), e.value
    q = quantize_model(model, "int8")  # per row: any width works
    with torch.no_grad():
        assert math.isfinite(float(q(torch.randint(0, 65, (1, 8))).logits.abs().max()))
