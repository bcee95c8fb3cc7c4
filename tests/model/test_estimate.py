"""estimate(): exact parameter counts, and FLOPs / memory checked against values worked out by hand."""

import pytest

from slm_blocks import ModelSpec, build_model, estimate, list_presets, load_preset

SMALL = {
    "vocab_size": 10, "d_model": 8, "max_seq_len": 4,
    "blocks": [{"type": "embedding"}, {"type": "positional", "kind": "rope"},
               {"type": "transformer", "attention": {"n_heads": 2}, "mlp": {"activation": "gelu", "hidden": 16}},
               {"type": "final_norm"}, {"type": "lm_head"}],
}


def test_hand_computed_small_spec():
    e = estimate(ModelSpec.from_dict(SMALL), batch_size=2, seq_len=4)
    # embedding 10*8 (tied head) + q,k,v,o 4*8*8 + MLP 2*8*16 + two RMSNorms 2*8 + final norm 8
    assert e.params == 80 + 256 + 256 + 16 + 8 == 616
    assert e.embedding_params == 80
    # 2 FLOPs per multiply-add over all matmul weights incl. the LM head (80 + 256 + 256), plus attention:
    # 2 * 2 * heads*head_dim (8) * mean keys attended over positions 1..4 ((1+2+3+4)/4 = 2.5)
    assert e.flops_per_token_forward == 2 * 592 + 80 == 1264
    assert e.flops_per_token_train == 3 * 1264
    # per token: embedding output 8, two RMSNorms (input and normalised input) 32, attention 8 + q/k/v 24 +
    # RoPE's rotated q, k 16 + out 8 + logsumexp 2 (58), MLP 8 + 2*16 (40), final RMSNorm 16, the head's input 8 +
    # logits, log-softmax and two gradients 4*10 (48) = 202 values, times batch 2 * seq 4 * 4 bytes; no mask
    # (plain causal RoPE) and no attention dropout, so nothing grows with seq²
    assert e.train_activations_bytes == 202 * 2 * 4 * 4 == 6464 and e.attention_bytes == 0
    assert e.train_weights_bytes == e.train_grads_bytes == 616 * 4
    assert e.train_optimizer_bytes == 616 * 8
    assert e.train_total_bytes == 2 * 2464 + 4928 + 6464
    assert e.kv_cache_bytes_per_token == 2 * 2 * 4 * 4  # k and v, 2 kv heads x head_dim 4, fp32
    assert e.inference_bytes == 2464 + 64 * 2 * 4


def test_sliding_window_reduces_attention_flops():
    spec = load_preset("mistral")
    full = spec.copy()
    full.blocks[2].attention.sliding_window = None
    assert estimate(spec).flops_per_token_forward < estimate(full).flops_per_token_forward


@pytest.mark.parametrize("name", list(list_presets()))
def test_preset_params_exact_and_laptop_sized(name):
    spec = load_preset(name)
    model = build_model(spec)
    n = sum(p.numel() for p in model.parameters())
    assert estimate(spec).params == n
    assert n <= 15_000_000


def test_bf16_halves_weight_bytes():
    spec = load_preset("llama")
    assert estimate(spec, dtype="bfloat16").train_weights_bytes * 2 == estimate(spec).train_weights_bytes


def test_attended_keys_in_closed_form_match_the_sum():
    from slm_blocks.model.blocks.attention import attended as _attended

    for T in (1, 2, 7, 64, 100):
        for w in (None, 1, 3, 64, 200):
            assert _attended(T, w) == pytest.approx(sum(min(t, w or T) for t in range(1, T + 1)) / T)


def _every_block_kind() -> ModelSpec:
    """All block types, standalone layers with and without their norm, post-norm and untied head."""
    return ModelSpec.from_dict({"vocab_size": 50, "d_model": 32, "max_seq_len": 16, "tie_embeddings": False, "blocks": [
        {"type": "embedding", "scale": True}, {"type": "positional", "kind": "learned"},
        {"type": "transformer", "repeat": 2, "norm_placement": "post",
         "attention": {"n_heads": 4, "n_kv_heads": 2, "qkv_bias": True, "qk_norm": True},
         "mlp": {"gated": True, "bias": True, "hidden": 48}, "norm": {"kind": "layernorm", "bias": True}},
        {"type": "attention", "attention": {"n_heads": 2, "head_dim": 8, "out_bias": True}},
        {"type": "mlp", "norm": None, "mlp": {"hidden": 40}},
        {"type": "norm", "norm": {"kind": "layernorm", "bias": False}},
        {"type": "transformer", "norm_placement": "sandwich"},
        {"type": "final_norm"}, {"type": "lm_head"}]})


@pytest.mark.parametrize("name", [*list_presets(), "every-kind"])
def test_block_costs_are_the_model_parameters(name):
    """Per-block tensors (the Build diagram's detail) are exactly the built model's parameters, and their counts
    add up to the estimate."""
    from slm_blocks.model.estimate import block_costs

    spec = _every_block_kind() if name == "every-kind" else load_preset(name)
    costs = block_costs(spec)
    assert [c.type for c in costs] == [b.type for b in spec.blocks]
    listed = {n: s for c in costs for n, s in c.tensors}
    assert sum(len(c.tensors) for c in costs) == len(listed)  # no tensor listed twice
    model = build_model(spec)
    assert listed == {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert sum(c.params for c in costs) == estimate(spec).params
    assert all(c.shapes for c in costs)
