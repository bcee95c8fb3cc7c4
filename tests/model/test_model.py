"""Every preset and every block option: builds, starts at ln(vocab) loss, is causal, batches exactly,
generates the same tokens with and without the KV cache, and survives save_pretrained/from_pretrained."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from slm_blocks import ModelSpec, build_model, estimate, list_presets, load_preset

V, C, T = 50, 32, 24


def tiny(**over) -> dict:
    """A small Llama-like spec as a dict; `over` patches the transformer block (dotted keys for sub-specs)."""
    block = {"type": "transformer", "repeat": 2, "attention": {"n_heads": 4}, "mlp": {"activation": "silu",
             "gated": True, "hidden": 64}, "norm": {"kind": "rmsnorm"}}
    top = {}
    for key, value in over.items():
        if key.startswith("spec."):
            top[key[5:]] = value
        elif key == "positional":
            continue
        elif "." in key:
            sub, field = key.split(".")
            block[sub] = {**block[sub], field: value}
        else:
            block[key] = value
    blocks = [{"type": "embedding"}, {"type": "positional", "kind": over.get("positional", "rope")}, block,
              {"type": "final_norm"}, {"type": "lm_head"}]
    return {"vocab_size": V, "d_model": C, "max_seq_len": T, "blocks": blocks, **top}


def free_order(*kinds) -> dict:
    layer = {"attention": {"type": "attention", "attention": {"n_heads": 2}},
             "mlp": {"type": "mlp", "mlp": {"hidden": 48}}, "norm": {"type": "norm"}}
    return {"vocab_size": V, "d_model": C, "max_seq_len": T, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": "learned"}, *[layer[k] for k in kinds],
        {"type": "final_norm"}, {"type": "lm_head"}]}


OPTIONS = {
    **{f"pos-{k}": tiny(positional=k) for k in ("learned", "sinusoidal", "rope", "alibi", "none")},
    **{f"norm-{p}": tiny(norm_placement=p) for p in ("pre", "post", "sandwich", "classic_post")},
    "parallel": tiny(residual="parallel"),
    "sandwich-parallel": tiny(residual="parallel", norm_placement="sandwich"),
    "mqa": tiny(**{"attention.n_kv_heads": 1}),
    "gqa": tiny(**{"attention.n_kv_heads": 2}),
    "head-dim": tiny(**{"attention.head_dim": 12}),
    "qkv-out-bias": tiny(**{"attention.qkv_bias": True, "attention.out_bias": True}),
    "qk-norm": tiny(**{"attention.qk_norm": True}),
    "window": tiny(**{"attention.sliding_window": 5}),
    "window-mixed": tiny(**{"attention.sliding_window": 5}, full_attention_every=2),
    "window-alibi": tiny(**{"attention.sliding_window": 6}, positional="alibi"),
    "attn-dropout": tiny(**{"attention.dropout": 0.1}, **{"spec.dropout": 0.1}),
    **{f"mlp-{a}": tiny(**{"mlp.activation": a, "mlp.gated": False}) for a in ("gelu", "gelu_tanh", "relu", "silu")},
    **{f"glu-{a}": tiny(**{"mlp.activation": a, "mlp.gated": True}) for a in ("gelu", "gelu_tanh", "relu", "silu")},
    "mlp-bias": tiny(**{"mlp.bias": True, "mlp.hidden": None}),
    "layernorm": tiny(**{"norm.kind": "layernorm", "norm.bias": True}),
    "layernorm-nobias": tiny(**{"norm.kind": "layernorm", "norm.bias": False}),
    "untied": tiny(**{"spec.tie_embeddings": False}),
    "free-order": free_order("attention", "mlp", "mlp", "attention"),
    "with-norm-block": free_order("mlp", "norm", "attention"),
    "no-layers": free_order(),
}
SPECS = {**{f"preset-{n}": load_preset(n) for n in list_presets()},
         **{k: ModelSpec.from_dict(v) for k, v in OPTIONS.items()}}
SPECS["embed-scale"] = SPECS["pos-rope"].copy(
    blocks=[b if b.type != "embedding" else type(b)(scale=True) for b in SPECS["pos-rope"].blocks])


@pytest.fixture(scope="module", params=list(SPECS), ids=list(SPECS))
def case(request):
    torch.manual_seed(0)
    spec = SPECS[request.param]
    return spec, build_model(spec).eval()


def test_builds_with_estimated_unique_params_and_initial_loss(case):
    spec, model = case
    params = list(model.parameters())  # unique: tied weights appear once
    assert sum(p.numel() for p in params) == estimate(spec).params
    assert len({p.data_ptr() for p in params}) == len(params), "repeats must not share weights"
    ids = torch.randint(0, spec.vocab_size, (4, min(spec.max_seq_len, 32)))
    out = model(ids, labels=ids)
    assert out.logits.shape == (*ids.shape, spec.vocab_size)
    assert abs(out.loss.item() - math.log(spec.vocab_size)) < 0.3


def test_causal(case):
    spec, model = case
    n = min(spec.max_seq_len, 20)
    ids = torch.randint(0, spec.vocab_size, (1, n))
    t = n // 2
    changed = ids.clone()
    changed[0, t + 1:] = (changed[0, t + 1:] + 1) % spec.vocab_size
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-5)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_equivalence(case, side):
    spec, model = case
    lengths = [min(spec.max_seq_len, 16), 9, 4]
    rows = [torch.randint(3, spec.vocab_size, (n,)) for n in lengths]
    L = max(lengths)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(L - len(r), L) if side == "left" else slice(0, len(r))
        ids[i, sl], mask[i, sl] = r, 1
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        for i, r in enumerate(rows):
            alone = model(r[None]).logits[0]
            got = batched[i, L - len(r):] if side == "left" else batched[i, : len(r)]
            torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-5)


def test_kv_cache_generation_matches_no_cache(case):
    spec, model = case
    prompt = torch.randint(0, spec.vocab_size, (2, 5))
    n = min(spec.max_seq_len, 40) - 5
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    with_cache = model.generate(prompt, use_cache=True, **kw)
    without = model.generate(prompt, use_cache=False, **kw)
    assert with_cache.shape == (2, 5 + n)
    assert torch.equal(with_cache, without)


def test_save_and_from_pretrained(case, tmp_path):
    spec, model = case
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.model_spec() == spec
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())  # every weight, bit for bit
    ids = torch.randint(0, spec.vocab_size, (2, min(spec.max_seq_len, 16)))
    with torch.no_grad():  # a weight read from a memory-mapped file can sit at an address that makes the BLAS pick
        # another kernel for a small matrix (an expert's few routed tokens): rounding-level differences
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)


def test_sampling_controls_and_streamer():
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value)

        def end(self):
            self.chunks.append(None)

    model = build_model(load_preset("llama")).eval()
    streamer = Collect()
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=12, min_new_tokens=12, do_sample=True, top_k=20,
                         top_p=0.9, temperature=0.8, repetition_penalty=1.3, streamer=streamer, pad_token_id=0)
    assert out.shape == (1, 15)
    assert streamer.chunks[-1] is None and len(streamer.chunks) == 14  # prompt, 12 tokens, end


def test_learned_positions_refuse_past_context_with_clear_message():
    model = build_model(load_preset("tiny-char")).eval()
    with pytest.raises(ValueError, match="max_seq_len 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_explain_mode_is_the_same_forward_with_probabilities(case):
    """output_attentions=True runs the same attention code written out (for the app's attention maps): same
    logits, one probability map per attention layer, causal (and windowed where the layer has a window)."""
    spec, model = case
    ids = torch.randint(0, spec.vocab_size, (2, T))
    with torch.no_grad():
        plain = model(ids, use_cache=False)
        explained = model(ids, use_cache=False, output_attentions=True)
    torch.testing.assert_close(explained.logits, plain.logits, atol=1e-5, rtol=1e-5)
    plan = [window for _, attn, window in spec.layer_plan() if attn is not None]
    assert len(explained.attentions) == len(plan)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for probs, window in zip(explained.attentions, plan):
        assert probs.shape[0] == 2 and probs.shape[-2:] == (T, T)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
        assert probs[..., future].abs().sum() == 0
        if window is not None:
            far = torch.ones(T, T, dtype=torch.bool).tril(-window)  # keys `window` or more positions back
            assert probs[..., far].abs().sum() == 0
