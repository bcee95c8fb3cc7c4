"""A block type is a plug-in: a toy "gate" type (tests/model/toy_gate.py), registered and nothing else changed,
parses, validates, builds, trains, decodes one token at a time, and appears in the Build tab, the estimate, the
Train preview and the model card."""

import pytest
import torch

from slm_blocks import ModelSpec, SpecError, build_model, estimate
from slm_blocks.model.blocks import register, unregister
from tests.model import toy_gate


@pytest.fixture()
def gate():
    register(toy_gate)
    yield
    unregister("gate")


def spec_dict(start=0.5):
    return {"vocab_size": 40, "d_model": 16, "max_seq_len": 24, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": "rope"},
        {"type": "transformer", "attention": {"n_heads": 2}, "mlp": {"hidden": 32}},
        {"type": "gate", "start": start}, {"type": "mlp"}, {"type": "final_norm"}, {"type": "lm_head"}]}


def test_unknown_until_registered():
    with pytest.raises(SpecError, match="not a block type"):
        ModelSpec.from_dict(spec_dict())


def test_parses_checks_builds_and_decodes(gate):
    spec = ModelSpec.from_dict(spec_dict())
    assert spec.blocks[3].start == 0.5 and spec.summary().split(" · ")[3] == "gate"
    with pytest.raises(SpecError) as e:  # its own check, at its own path
        ModelSpec.from_dict(spec_dict(start=5.0))
    assert [(p.block, p.field) for p in e.value.problems] == [(3, "start")]
    with pytest.raises(SpecError, match="at most 5.0"):  # its field's bounds, from its metadata
        ModelSpec.from_dict(spec_dict(start=9.0))

    torch.manual_seed(0)
    model = build_model(spec)
    names = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert names["model.layers.1.gate"] == (16,)
    assert estimate(spec).params == sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, 40, (2, 12))
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert model.model.layers[1].gate.grad.abs().sum() > 0  # it trains

    from slm_blocks.model.generation import SamplingConfig, stream_tokens

    model.eval()
    prompt = [1, 2, 3]
    hist, expected = list(prompt), []
    with torch.no_grad():
        for _ in range(10):
            expected.append(int(model(torch.tensor([hist]), use_cache=False).logits[0, -1].argmax()))
            hist.append(expected[-1])
    assert list(stream_tokens(model, torch.tensor([prompt]), SamplingConfig(max_new_tokens=10, temperature=0))) \
        == expected  # the one-token step is the gate module's own


def test_appears_in_the_build_tab(gate):
    from slm_blocks.ui import spec_view as B

    assert "gate" in B.BLOCK_TYPES
    assert [(p, m["label"]) for p, _, m in B.field_widgets("gate")] == [("start", "Gate start")]
    state = B.preset_state("tiny-char")
    state = B.adder("gate", state)
    types = [b["type"] for b in state["blocks"]]
    assert types.index("gate") == types.index("final_norm") - 1  # a layer: after the last layer
    assert B.check(state)[1] == []
    assert "per-channel gate starting at 0" in B.diagram(state)
    bid = state["blocks"][types.index("gate")]["_id"]
    detail = B.block_detail(state, bid)
    assert "model.layers.4.gate" in detail.replace(".<wbr>", ".") and "128 parameters" in detail
    problems, figures = B.summary(state)
    assert "parameters" in figures


def test_appears_in_the_estimate_preview_and_card(gate, tmp_path):
    from types import SimpleNamespace

    from slm_blocks.model.estimate import block_costs
    from slm_blocks.sharing.card import write_model_card
    from slm_blocks.sharing.native import native_family
    from slm_blocks.training.preview import architecture

    spec = ModelSpec.from_dict(spec_dict())
    without = ModelSpec.from_dict({**spec_dict(), "blocks": [b for b in spec_dict()["blocks"] if b["type"] != "gate"]})
    assert estimate(spec).params == estimate(without).params + 16
    assert estimate(spec).train_activations_bytes > estimate(without).train_activations_bytes
    assert block_costs(spec)[3].tensors == [("model.layers.1.gate", (16,))]
    assert "gate (per-channel gate starting at 0.5)" in architecture(spec)
    assert native_family(spec) == (None, "a gate layer has no native transformers class")

    result = SimpleNamespace(native=False, model_class="SLMForCausalLM", max_abs_diff=0.0, greedy_match=True,
                             why_not_native=native_family(spec)[1])
    write_model_card(tmp_path, spec, result, {})
    card = (tmp_path / "README.md").read_text()
    assert "| 3 | gate | per-channel gate starting at 0.5 | start=0.5 |" in card
    assert "a gate layer has no native transformers class" in card
