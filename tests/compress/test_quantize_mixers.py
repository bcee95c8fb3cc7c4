"""int8 / int4 weight-only quantization of the new blocks: the experts, the router, the Mamba2 and short-convolution
projections are quantized like every other Linear, the model still generates (the forward, as the one-token step
covers only plain weights), and it stays close to the fp32 model."""

import pytest
import torch

from slm_blocks.compress.quantize import quantizable_layers, quantize_model
from slm_blocks.model.decode import Decoder
from slm_blocks.model.generation import SamplingConfig, stream_tokens
from tests.model.test_mixers import MAMBA, SPECS, attention, model_of, spec_of


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_new_blocks_quantize_and_generate(weights):
    mlp = {"activation": "silu", "gated": True, "hidden": 32}  # widths that int4's groups of 32 divide
    model = model_of(spec_of({"type": "mamba2", "mamba": MAMBA, "mlp": mlp}, attention(mlp=mlp, experts={
        "n_experts": 4, "top_k": 2}), {"type": "short_conv", "mlp": mlp}))
    names = {n for n, _ in quantizable_layers(model)}
    assert {"model.layers.0.mamba.in_proj", "model.layers.1.mlp.gate", "model.layers.1.mlp.experts.3.down_proj",
            "model.layers.2.conv.in_proj"} <= names
    q = quantize_model(model, weights)
    assert Decoder.unsupported(q) is not None  # quantized weights: generation runs the module forward
    ids = torch.randint(0, 40, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = model(ids).logits, q(ids).logits
    assert float((got - ref).abs().max()) < (0.05 if weights == "int8" else 0.5)
    tokens = list(stream_tokens(q, ids[:, :5], SamplingConfig(max_new_tokens=12, temperature=0)))
    assert len(tokens) == 12


def test_a_distilled_moe_student_also_balances_its_routers():
    from slm_blocks.training.distill import Teacher

    teacher = Teacher(model_of(SPECS["mamba2"]()), alpha=0.5, temperature=2.0)
    student = model_of(SPECS["moe-in-transformer"]()).train()
    x = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(1))
    parts = {}
    loss, kd, ce = teacher.loss(student, x[:, :-1], x[:, 1:], parts)
    assert 1.9 < parts["aux"] < 4.1
    torch.testing.assert_close(loss, 0.5 * ce + 0.5 * kd + 0.01 * torch.tensor(parts["aux"]), atol=1e-5, rtol=0)
