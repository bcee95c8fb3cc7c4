"""The fast generation loop: token-exact against transformers' generate(), the same logits processing as
transformers' processors, cropping past the context, stopping, and clear errors for bad settings."""

import threading

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
)

from slm_blocks import ModelSpec, build_model, load_preset
from slm_blocks.model import generation as G
from slm_blocks.model.generation import (
    SamplingConfig, StaticCache, generate_text, next_token_distribution, process_logits, stream_text, stream_tokens,
)
from slm_blocks.training.tokenization import build_tokenizer


def small(positional="rope", vocab=50, max_seq_len=24, **attention) -> ModelSpec:
    block = {"type": "transformer", "repeat": 2, "attention": {"n_heads": 4, **attention},
             "mlp": {"activation": "silu", "gated": True, "hidden": 64}}
    return ModelSpec.from_dict({"vocab_size": vocab, "d_model": 32, "max_seq_len": max_seq_len, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": positional}, block, {"type": "final_norm"},
        {"type": "lm_head"}]})


SPECS = {
    "tiny-char": lambda: load_preset("tiny-char"),  # learned positions, MHA, biases
    "llama": lambda: load_preset("llama"),  # RoPE + GQA
    "gemma3": lambda: load_preset("gemma3"),  # MQA, QK-norm, window 64 (exceeded below), local RoPE base
    "alibi": lambda: small("alibi"),
    "sinusoidal": lambda: small("sinusoidal"),
    "no-positions": lambda: small("none"),
    "window": lambda: small(sliding_window=5),
    "window-alibi-gqa": lambda: small("alibi", sliding_window=6, n_kv_heads=2),
    "mqa": lambda: small(n_kv_heads=1),
}
NEW = {"gemma3": 70}  # past its sliding window of 64


def model_for(name_or_spec, seed=0):
    torch.manual_seed(seed)
    spec = SPECS[name_or_spec]() if isinstance(name_or_spec, str) else name_or_spec
    return build_model(spec).eval()


def hf_generate(model, prompt, n, **kw):
    """generate() with an explicit all-ones mask: otherwise it takes pad_token_id occurrences for padding."""
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                         pad_token_id=0, **kw)
    return out[0, prompt.shape[1]:].tolist()


@pytest.mark.parametrize("name", list(SPECS))
def test_greedy_matches_transformers_generate_exactly(name):
    model = model_for(name)
    ctx = model.config.max_position_embeddings
    prompt = torch.randint(0, model.config.vocab_size, (1, 5))
    n = NEW.get(name, min(ctx, 40) - 5)
    ours = list(stream_tokens(model, prompt, SamplingConfig(max_new_tokens=n, temperature=0)))
    assert ours == hf_generate(model, prompt, n, do_sample=False, use_cache=False)


def test_seeded_sampling_is_reproducible_and_draws_what_transformers_draws():
    model = model_for("llama")
    prompt = torch.tensor([[1, 2, 3, 2, 1]])
    knobs = dict(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.3)
    cfg = SamplingConfig(max_new_tokens=30, seed=123, **knobs)
    a, b = list(stream_tokens(model, prompt, cfg)), list(stream_tokens(model, prompt, cfg))
    assert a == b
    assert a != list(stream_tokens(model, prompt, SamplingConfig(max_new_tokens=30, seed=124, **knobs)))
    torch.manual_seed(123)  # a seeded Generator and the seeded global generator give the same draws
    assert a == hf_generate(model, prompt, 30, do_sample=True, **knobs)


def test_top_k_1_and_temperature_0_are_greedy():
    model = model_for("tiny-char")
    prompt = torch.tensor([[5, 6, 7]])
    greedy = list(stream_tokens(model, prompt, SamplingConfig(max_new_tokens=30, temperature=0)))
    top1 = list(stream_tokens(model, prompt, SamplingConfig(max_new_tokens=30, temperature=1.3, top_k=1, seed=0)))
    assert top1 == greedy


def test_penalized_greedy_matches_transformers():
    model = model_for("tiny-char")
    prompt = torch.tensor([[5, 6, 7, 5]])
    cfg = SamplingConfig(max_new_tokens=40, temperature=0, repetition_penalty=1.5)
    assert list(stream_tokens(model, prompt, cfg)) == hf_generate(model, prompt, 40, do_sample=False,
                                                                   repetition_penalty=1.5)


def reference_cropped_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Full forwards without a cache over the window the loop keeps: the context starts at the last
    crop point, and overflowing it moves that point so the last max_seq_len // 2 tokens remain."""
    max_len = model.config.max_position_embeddings
    hist, start, out = list(prompt), max(0, len(prompt) - max_len), []
    with torch.no_grad():
        for _ in range(n):
            if len(hist) - start > max_len:
                start = len(hist) - max_len // 2
            tok = int(model(torch.tensor([hist[start:]])).logits[0, -1].argmax())
            out.append(tok)
            hist.append(tok)
    return out


@pytest.mark.parametrize("name,prompt_len", [("tiny-char", 10), ("tiny-char", 100), ("window-alibi-gqa", 3)])
def test_cropping_past_the_context(name, prompt_len):
    model = model_for(name)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len))
    n = 3 * model.config.max_position_embeddings + 7
    ours = list(stream_tokens(model, prompt, SamplingConfig(max_new_tokens=n, temperature=0)))
    assert len(ours) == n
    assert ours == reference_cropped_greedy(model, prompt[0].tolist(), n)


def test_static_cache_works_as_the_forward_cache():
    model = model_for("llama")
    ids = torch.randint(0, 4096, (1, 12))
    cache = StaticCache(model, max_len=20)
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :9], cache=cache).logits
        rest = torch.cat([model(ids[:, i:i + 1], cache=cache).logits for i in range(9, 12)], dim=1)
    assert cache.get_seq_length() == 12
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- logits processing


def fixed_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 40, generator=g) * 3
    logits[0, 7] = logits[0, 8]  # a tie at the top-k boundary must keep both, as transformers does
    ids = torch.randint(0, 40, (3, 12), generator=g)
    seen = torch.zeros(3, 40, dtype=torch.bool).scatter_(1, ids, True)
    return logits, ids, seen


@pytest.mark.parametrize("cfg,processors", [
    (SamplingConfig(temperature=1.0, top_k=None, repetition_penalty=1.3), [RepetitionPenaltyLogitsProcessor(1.3)]),
    (SamplingConfig(temperature=0.7, top_k=None), [TemperatureLogitsWarper(0.7)]),
    (SamplingConfig(temperature=1.0, top_k=5), [TopKLogitsWarper(5)]),
    (SamplingConfig(temperature=1.0, top_k=None, top_p=0.8), [TopPLogitsWarper(0.8)]),
    (SamplingConfig(temperature=1.0, top_k=None, top_p=1e-6), [TopPLogitsWarper(1e-6)]),
    (SamplingConfig(temperature=0.6, top_k=9, top_p=0.7, repetition_penalty=0.8),
     [RepetitionPenaltyLogitsProcessor(0.8), TemperatureLogitsWarper(0.6), TopKLogitsWarper(9), TopPLogitsWarper(0.7)]),
])
def test_logits_processing_equals_transformers_processors(cfg, processors):
    logits, ids, seen = fixed_logits()
    expected = logits.clone()
    for p in processors:
        expected = p(ids, expected)
    got = process_logits(logits.clone(), cfg, seen)
    assert torch.equal(got, expected)
    assert (got > -float("inf")).sum(-1).min() >= 1  # never an empty set


# ----------------------------------------------------------------------------- stopping, text, errors


def test_stop_event_and_eos():
    model = model_for("tiny-char")
    prompt = torch.tensor([[1, 2, 3]])
    stop = threading.Event()
    got = []
    for tok in stream_tokens(model, prompt, SamplingConfig(max_new_tokens=50, temperature=0), stop):
        got.append(tok)
        if len(got) == 3:
            stop.set()
    assert len(got) == 3
    assert list(stream_tokens(model, prompt, SamplingConfig(temperature=0), stop)) == []
    first = got[0]
    assert list(stream_tokens(model, prompt, SamplingConfig(temperature=0), eos_token_id=first)) == [first]
    assert list(stream_tokens(model, prompt, SamplingConfig(temperature=0), eos_token_id=[64, first])) == [first]


def test_text_helpers_with_a_byte_tokenizer():
    tok = build_tokenizer("byte")
    model = model_for(small(vocab=len(tok), max_seq_len=32))
    cfg = SamplingConfig(max_new_tokens=40, seed=3, temperature=1.0)
    chunks = list(stream_text(model, tok, "Hello", cfg))
    text = generate_text(model, tok, "Hello", cfg)
    assert chunks and chunks[-1] == text
    assert all(b.startswith(a) for a, b in zip(chunks, chunks[1:]))  # text only grows
    assert all(not c.endswith("\ufffd") for c in chunks[:-1])


def test_stream_text_holds_back_partial_utf8(monkeypatch):
    tok = build_tokenizer("byte")
    target = "é€ ok"
    monkeypatch.setattr(G, "stream_tokens", lambda *a, **k: iter(target.encode("utf-8")))  # byte id == byte value
    chunks = list(stream_text(None, tok, "x", SamplingConfig()))
    assert chunks[-1] == target
    assert not any("\ufffd" in c for c in chunks)
    assert chunks[:2] == ["é", "é€"]


def test_next_token_distribution():
    model = model_for("tiny-char")
    ids = torch.tensor([[4, 5, 6, 7]])
    top = next_token_distribution(model, ids, top=5)
    probs = [p for _, p in top]
    assert len(top) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    greedy = next(stream_tokens(model, ids, SamplingConfig(temperature=0)))
    assert top[0][0] == greedy
    assert next_token_distribution(model, ids, top=3, temperature=0)[0] == (greedy, 1.0)
    assert len(next_token_distribution(model, list(range(60)) * 2)) == 10  # cropped to the context


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", float("nan")), ("top_k", 0), ("top_p", 0.0), ("top_p", 1.5),
    ("max_new_tokens", 0), ("repetition_penalty", 0.0), ("seed", 1.5),
])
def test_bad_settings_name_the_field(field, value):
    model = model_for("tiny-char")
    with pytest.raises(ValueError, match=field):
        next(stream_tokens(model, torch.tensor([[1]]), SamplingConfig(**{field: value})))


def test_bad_prompts():
    model = model_for("tiny-char")
    tok = build_tokenizer("char", text="abc")
    with pytest.raises(ValueError, match="prompt"):
        generate_text(model, tok, "", SamplingConfig())
    with pytest.raises(ValueError, match="input_ids"):
        next(stream_tokens(model, torch.zeros(1, 0, dtype=torch.long), SamplingConfig()))
    with pytest.raises(ValueError, match="input_ids"):
        next(stream_tokens(model, torch.tensor([[1, 99]]), SamplingConfig()))
    with pytest.raises(ValueError, match="top"):
        next_token_distribution(model, [1, 2], top=0)
