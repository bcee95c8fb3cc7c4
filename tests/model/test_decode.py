"""The one-token decode step: the module forward's logits at every position, for every block variant; it reads
the weights as they are when a generation starts (never a stale copy after training); and models it does not
cover fall back to the forward."""

import pytest
import torch
from torch import nn

from slm_blocks import ModelSpec, build_model, load_preset
from slm_blocks.model.decode import Decoder
from slm_blocks.model.generation import SamplingConfig, StaticCache, _logits, stream_tokens


def small(positional="rope", blocks=None, embed_scale=False, **layer) -> ModelSpec:
    attention = {"n_heads": 4, **layer.pop("attention", {})}
    block = {"type": "transformer", "repeat": 2, "attention": attention,
             "mlp": {"activation": "silu", "gated": True, "hidden": 48}, **layer}
    return ModelSpec.from_dict({"vocab_size": 40, "d_model": 32, "max_seq_len": 40, "blocks": [
        {"type": "embedding", "scale": embed_scale}, {"type": "positional", "kind": positional},
        *(blocks or [block]), {"type": "final_norm"}, {"type": "lm_head"}]})


VARIANTS = {
    **{name: (lambda name=name: load_preset(name)) for name in ["tiny-char", "gpt2", "llama", "mistral", "qwen3",
                                                                 "gemma3"]},
    "alibi-gqa-window": lambda: small("alibi", attention={"n_kv_heads": 2, "sliding_window": 6}),
    "rope-mqa-window-qknorm": lambda: small(attention={"n_kv_heads": 1, "sliding_window": 5, "qk_norm": True}),
    "qknorm-no-positions": lambda: small("none", attention={"qk_norm": True, "qkv_bias": True, "out_bias": True}),
    "sinusoidal-scaled": lambda: small("sinusoidal", embed_scale=True),
    "post-norm-layernorm": lambda: small("learned", norm_placement="post", norm={"kind": "layernorm", "bias": True}),
    "classic-post": lambda: small(norm_placement="classic_post"),
    "sandwich-parallel": lambda: small(norm_placement="sandwich", residual="parallel"),
    "separate-layers": lambda: small(blocks=[
        {"type": "attention", "attention": {"n_heads": 2}}, {"type": "mlp", "mlp": {"activation": "gelu"}},
        {"type": "norm"}, {"type": "attention", "attention": {"n_heads": 4, "n_kv_heads": 2}, "norm": None},
        {"type": "mlp", "mlp": {"activation": "relu", "bias": True}, "norm": None}]),
}


def model_for(name, seed=0):
    torch.manual_seed(seed)
    model = build_model(VARIANTS[name]()).eval()
    with torch.no_grad():  # norms start at weight 1, bias 0: make them matter
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def decoded_logits(model, ids, prefill):
    """Logits after each position >= prefill: the forward fills the cache with the prompt, the step does the rest."""
    with torch.inference_mode():
        cache = StaticCache(model)
        out = [_logits(model, ids[:, :prefill], 0, cache)]
        step = Decoder(model, cache)
        out += [step(ids[0, p], p) for p in range(prefill, ids.shape[1])]
    return torch.stack(out)  # (T - prefill + 1, V): logits after positions prefill-1 .. T-1


@pytest.mark.parametrize("name", list(VARIANTS))
def test_decode_step_equals_the_forward(name):
    model = model_for(name)
    T = min(model.config.max_position_embeddings, 72)  # gemma3: past its window of 64 local positions
    ids = torch.randint(0, model.config.vocab_size, (1, T))
    with torch.inference_mode():
        full = model(ids, use_cache=False).logits[0].float()  # (T, V)
    ours = decoded_logits(model, ids, prefill=3)
    torch.testing.assert_close(ours, full[2:], atol=1e-5, rtol=1e-5)


def test_decode_step_keeps_the_cache_usable_by_the_forward():
    model = model_for("llama")
    ids = torch.randint(0, model.config.vocab_size, (1, 12))
    with torch.inference_mode():
        cache = StaticCache(model)
        _logits(model, ids[:, :4], 0, cache)
        step = Decoder(model, cache)
        for p in range(4, 8):
            step(ids[0, p], p)
        assert cache.get_seq_length() == 8
        after = model(ids[:, 8:], cache=cache).logits[0]  # the forward continues where the step stopped
        full = model(ids, use_cache=False).logits[0, 8:]
    torch.testing.assert_close(after, full, atol=1e-5, rtol=1e-5)


def reference_greedy(model, prompt, n):
    hist, out = list(prompt), []
    with torch.inference_mode():
        for _ in range(n):
            tok = int(model(torch.tensor([hist]), use_cache=False).logits[0, -1].argmax())
            out.append(tok)
            hist.append(tok)
    return out


def test_generation_after_training_uses_the_trained_weights():
    model = model_for("tiny-char")
    keys = set(model.state_dict())
    prompt = [1, 2, 3, 4]
    greedy = SamplingConfig(max_new_tokens=20, temperature=0)
    before = list(stream_tokens(model, torch.tensor([prompt]), greedy))
    assert before == reference_greedy(model, prompt, 20)

    model.train()  # a few optimizer steps change every weight in place, the q/k/v projections included
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.randint(0, model.config.vocab_size, (4, 32))
    losses = []
    for _ in range(3):
        loss = model(data, labels=data, use_cache=False).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0]  # the forward trains on the live weights
    model.eval()

    after = list(stream_tokens(model, torch.tensor([prompt]), greedy))
    assert after == reference_greedy(model, prompt, 20)
    assert after != before
    assert set(model.state_dict()) == keys  # generation left nothing on the model


class Wrapped(nn.Linear):
    """Stands in for an adapter-wrapped projection (LoRA, quantized): not a plain nn.Linear."""


def test_models_the_step_does_not_cover_use_the_forward():
    model = model_for("llama")
    prompt = torch.tensor([[5, 6, 7]])
    greedy = SamplingConfig(max_new_tokens=12, temperature=0)
    expected = reference_greedy(model, [5, 6, 7], 12)
    assert Decoder.unsupported(model) is None

    old = model.model.layers[0].self_attn.q_proj
    wrapped = Wrapped(old.in_features, old.out_features, bias=False)
    wrapped.load_state_dict(old.state_dict())
    model.model.layers[0].self_attn.q_proj = wrapped
    assert "q_proj is not a plain nn.Linear" in Decoder.unsupported(model)
    with pytest.raises(ValueError, match="does not cover"):
        Decoder(model, StaticCache(model))
    assert list(stream_tokens(model, prompt, greedy)) == expected

    model.model.layers[0].self_attn.q_proj = old
    handle = model.lm_head.register_forward_hook(lambda *a: None)
    assert "forward hooks" in Decoder.unsupported(model)
    assert list(stream_tokens(model, prompt, greedy)) == expected
    handle.remove()

    torch.manual_seed(0)
    dropout = build_model(small(attention={"dropout": 0.1}))  # training mode: dropout is live
    assert "dropout" in Decoder.unsupported(dropout)
    assert Decoder.unsupported(dropout.eval()) is None
