"""The mixture-of-experts, Mamba2 and short-convolution blocks: exact parameter counts from their tensors, the
one-token step equal to the forward, the chunked scan equal to the plain recurrence, the routers' load-balancing
loss equal to transformers' and part of the training loss, and the estimate's active parameters and fixed-size
state."""

import pytest
import torch

from slm_blocks import ModelSpec, build_model, estimate, load_preset
from slm_blocks.model.blocks.mamba2 import ssd_scan
from slm_blocks.model.blocks.moe import balance
from slm_blocks.model.estimate import block_costs
from slm_blocks.model.generation import SamplingConfig, stream_tokens
from tests.model.test_decode import decoded_logits

SWIGLU = {"activation": "silu", "gated": True, "hidden": 24}


def spec_of(*layers, positional="rope", d_model=32, **top) -> ModelSpec:
    return ModelSpec.from_dict({"vocab_size": 40, "d_model": d_model, "max_seq_len": 48, **top, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": positional}, *layers,
        {"type": "final_norm", "norm": {"kind": "rmsnorm"}}, {"type": "lm_head"}]})


def attention(**kw):
    return {"type": "transformer", "attention": {"n_heads": 4, "n_kv_heads": 2, **kw.pop("attention", {})},
            "mlp": dict(SWIGLU), "norm": {"kind": "rmsnorm"}, **kw}


MAMBA = {"d_state": 8, "head_dim": 8, "chunk_size": 8}
SPECS = {
    "moe-in-transformer": lambda: spec_of(attention(repeat=2, experts={"n_experts": 4, "top_k": 2})),
    "moe-shared-expert": lambda: spec_of(attention(experts={"n_experts": 3, "top_k": 1, "shared_hidden": 16,
                                                            "norm_topk": False})),
    "moe-standalone": lambda: spec_of({"type": "moe", "experts": {"n_experts": 3, "top_k": 2},
                                       "mlp": {"activation": "gelu", "hidden": 20, "bias": True}}, attention()),
    "mamba2": lambda: spec_of({"type": "mamba2", "repeat": 2, "mamba": {**MAMBA, "n_groups": 2}},
                              positional="none"),
    "mamba2-mlp-biases": lambda: spec_of({"type": "mamba2", "mamba": {**MAMBA, "proj_bias": True, "conv_kernel": 2},
                                          "mlp": dict(SWIGLU)}, attention()),
    "short-conv": lambda: spec_of({"type": "short_conv", "repeat": 2, "mlp": dict(SWIGLU)}, attention(
        attention={"qk_norm": True})),
    "short-conv-bias-no-mlp": lambda: spec_of({"type": "short_conv", "conv": {"kernel": 5, "bias": True},
                                               "mlp": None}),
    "hybrid-every-kind": lambda: spec_of(
        {"type": "mamba2", "mamba": MAMBA, "mlp": dict(SWIGLU)}, attention(experts={"n_experts": 4, "top_k": 2}),
        {"type": "short_conv"}, {"type": "moe"}, {"type": "mamba2", "mamba": {**MAMBA, "chunk_size": 5}}),
}


def model_of(spec, seed=0):
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # norms, biases and routers start flat: make them matter
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith(".bias") or ".gate." in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("name", list(SPECS))
def test_exact_parameter_count_and_names(name):
    spec = SPECS[name]()
    model = build_model(spec)
    tensors = [t for c in block_costs(spec) for t in c.tensors]
    assert dict(tensors) == {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert estimate(spec).params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(SPECS))
def test_decode_step_equals_the_forward(name):
    model = model_of(SPECS[name]())
    ids = torch.randint(0, 40, (1, 30), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        full = model(ids, use_cache=False).logits[0]  # (T, V)
    torch.testing.assert_close(decoded_logits(model, ids, prefill=11), full[10:], atol=1e-5, rtol=1e-5)
    with torch.inference_mode():  # and transformers' generate, whose forward carries the states in its cache
        cached = model(ids[:, :11], use_cache=True)
        more = model(ids[:, 11:], cache=cached.cache).logits[0]
    torch.testing.assert_close(more, full[11:], atol=1e-5, rtol=1e-5)


def test_generation_crops_and_refills_the_states():
    """Past max_seq_len the history is cropped to its last half and prefilled again: the states restart with it."""
    model = model_of(SPECS["hybrid-every-kind"]())
    prompt, hist = [1, 2, 3], [1, 2, 3]
    with torch.inference_mode():
        for _ in range(46):  # 45 tokens fill the context of 48; the 46th follows the cropped last 24
            window = hist if len(hist) <= 48 else hist[-24:]
            hist.append(int(model(torch.tensor([window]), use_cache=False).logits[0, -1].argmax()))
    got = list(stream_tokens(model, torch.tensor([prompt]), SamplingConfig(max_new_tokens=70, temperature=0)))
    assert len(got) == 70 and got[:46] == hist[3:]


def test_chunked_scan_is_the_recurrence():
    g = torch.Generator().manual_seed(0)
    b, T, H, P, N = 2, 13, 3, 4, 5
    x, B, C = torch.randn(b, T, H, P, generator=g), torch.randn(b, T, H, N, generator=g), \
        torch.randn(b, T, H, N, generator=g)
    dt, A = torch.rand(b, T, H, generator=g), -torch.rand(H, generator=g) * 2
    h0 = torch.randn(b, H, P, N, generator=g)
    h, ys = h0.clone(), []
    for t in range(T):  # state_t = exp(dt·A)·state + dt·x Bᵀ, y = state C
        h = h * torch.exp(dt[:, t] * A)[:, :, None, None] + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
    for chunk in (1, 4, 13, 32):
        y, last = ssd_scan(x, dt, A, B, C, chunk, h0)
        torch.testing.assert_close(y, torch.stack(ys, 1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(last, h, atol=1e-5, rtol=1e-5)


def test_padding_leaves_a_recurrent_layer_unchanged():
    model = model_of(SPECS["hybrid-every-kind"]())
    ids = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        padded = model(ids, attention_mask=mask, use_cache=False).logits[1, 4:]
        alone = model(ids[1:, 4:], use_cache=False).logits[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- the routers' balance loss


def test_balance_loss_is_transformers_and_joins_the_training_loss():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    spec = SPECS["moe-in-transformer"]()
    model = model_of(spec).train()
    ids = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(4))
    out = model(ids, labels=ids)
    logits = tuple(r[0] for r in out.router_logits)
    assert len(logits) == 2 and logits[0].shape == (32, 4)
    theirs = load_balancing_loss_func(logits, 4, 2)
    torch.testing.assert_close(out.aux_loss, theirs)
    plain = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(out.loss, plain + 0.01 * theirs)
    out.loss.backward()
    assert model.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0  # the router learns
    with torch.no_grad():
        assert model.eval()(ids).router_logits is None  # generation does not collect them


def test_balance_is_top_k_when_routing_is_uniform():
    weighted, aux = balance([(torch.zeros(8, 4), 2, 0.5)])  # equal logits: every expert equally likely
    assert float(aux) == pytest.approx(2.0) and float(weighted) == pytest.approx(1.0)
    assert balance([]) == (None, None)


def test_aux_loss_is_logged_as_its_own_metric(make_run, mlflow_uri):
    import json

    from slm_blocks.training import train
    from slm_blocks.training.events import StepEvent
    from slm_blocks.training.tracking import Tracker, metric_history

    spec = spec_of(attention(repeat=2, experts={"n_experts": 4, "top_k": 2}), d_model=16)
    run = make_run("moe", spec=spec, max_steps=3)
    tracker = Tracker(run, uri=mlflow_uri)
    steps = []
    for event in train(run):
        tracker.on_event(event)
        if isinstance(event, StepEvent):
            steps.append(event)
    assert len(steps) == 3 and all(s.aux_loss is not None and 1.9 < s.aux_loss < 4.1 for s in steps)
    logged = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["aux_loss"] for r in logged if r["kind"] == "step"] == [s.aux_loss for s in steps]
    history = metric_history(mlflow_uri, [tracker.run_id], "aux_loss")
    assert list(history["value"]) == pytest.approx([s.aux_loss for s in steps])


# ----------------------------------------------------------------------------- the estimate


def test_estimate_counts_active_parameters_and_fixed_states():
    moe = load_preset("mixtral")
    e, expert = estimate(moe), 3 * 256 * 384
    assert e.params - e.active_params == 6 * (4 - 2) * expert  # two unchosen experts per layer
    assert e.flops_per_token_forward < 2 * e.params  # a token multiplies by its active weights only
    mamba = load_preset("mamba2")
    short, long = estimate(mamba, seq_len=64), estimate(mamba, seq_len=256)
    assert short.kv_cache_bytes_per_token == 0
    assert short.state_bytes_per_sequence == long.state_bytes_per_sequence == 12 * (16 * 32 * 64 + 640 * 3) * 4
    hybrid = estimate(load_preset("bamba"))
    assert hybrid.kv_cache_bytes_per_token == 2 * 2 * 2 * 32 * 4  # only the 2 attention layers cache keys
    assert hybrid.state_bytes_per_sequence == 6 * (16 * 32 * 64 + 640 * 3) * 4
    assert hybrid.inference_bytes == hybrid.train_weights_bytes + 8 * (hybrid.kv_cache_bytes_per_token * 256 +
                                                                       hybrid.state_bytes_per_sequence)


def test_pruning_keeps_new_mixers_whole_and_says_why():
    from slm_blocks.model.blocks import hook

    spec = SPECS["hybrid-every-kind"]()
    reasons = [hook(b, "prune", spec) for b in spec.blocks[2:7]]
    assert all(isinstance(r, str) and "kept whole" in r for r in reasons)
    from slm_blocks.grow.prune import check_options, importance

    problem, = check_options(spec, 1, 1.0, None)
    assert problem.path == "drop_layers" and all(f"block {i}: {r}" in problem.message for i, r in
                                                 zip(range(2, 7), reasons))
    scores = importance(model_of(spec), [torch.randint(0, 40, (2, 10))])  # a mixture of experts is measured whole
    assert len(scores["layer"]) == 5


def test_expert_choices_per_token():
    from slm_blocks.model.blocks.moe import expert_choices

    model = model_of(SPECS["moe-in-transformer"]())
    ids = torch.randint(0, 40, (1, 9), generator=torch.Generator().manual_seed(6))
    chosen = expert_choices(model, ids)
    assert list(chosen) == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert chosen["model.layers.0.mlp"].shape == (1, 9, 2) and int(chosen["model.layers.0.mlp"].max()) < 4
    with torch.no_grad():  # the first layer's router on its own input: the same choices
        x = model.model.layers[0].post_attention_layernorm(model.model.layers[0].self_attn(
            model.model.layers[0].input_layernorm(model.model.embed_tokens(ids)), _ctx(model, ids)) +
            model.model.embed_tokens(ids))
    assert torch.equal(chosen["model.layers.0.mlp"], model.model.layers[0].mlp.chosen(x))
    assert not model.model.layers[0].mlp._forward_pre_hooks  # hooks removed


def _ctx(model, ids):
    from slm_blocks.model.blocks.attention import AttentionContext
    from slm_blocks.model.blocks.positional import rope_tables

    ctx = AttentionContext(key_padding=None)
    ctx.rope = {k: rope_tables(torch.arange(ids.shape[1])[None], k[1], k[0]) for k in model.model.rope_keys}
    return ctx
