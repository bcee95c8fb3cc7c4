"""GGUF export: every native preset round-trips (read back by transformers' GGUF loader and gguf-py), the
exported folder of a trained model verifies in a fresh process, unsupported shapes and files are refused
with the reason, and (when llama-cpp-python is installed) llama.cpp itself reproduces the model."""

import json

import pytest
import torch

from slm_blocks import ModelSpec, build_model, load_preset
from slm_blocks.compress.gguf_export import GGUFError, export_gguf, gguf_support, rounded_model, write_gguf
from slm_blocks.compress.gguf_read import GGUFReadError, import_gguf, load_gguf, read_metadata
from slm_blocks.training.tokenization import build_tokenizer

PRESETS = ["tiny-char", "gpt2", "llama", "mistral", "qwen3", "gemma3"]
TEXT = "ROMEO:\nWhat say you, sir? I will go with thee.\nJULIET: Ay, me! 0123456789 & so on; (it's) [fine].\n" * 3


@pytest.fixture(scope="module")
def char_tok():
    return build_tokenizer("char", TEXT)


def _model(name, tok, seed=0):
    spec = load_preset(name).copy(vocab_size=len(tok))
    torch.manual_seed(seed)
    ids = {"bos_token_id": tok.eos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return build_model(spec, **ids).eval()


def _roundtrip(model, tok, path, quant, **read):
    """Write, read back with transformers, compare with our model holding the file's rounded weights."""
    r = write_gguf(model, tok, path, quant)
    native, gtok, meta = load_gguf(path, **read)
    ref = rounded_model(model, quant)
    T = r.context_length
    ids = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = float((native(ids, use_cache=False).logits - ref(ids, use_cache=False).logits).abs().max())
        prompt = ids[:1, :8]
        kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=24, min_new_tokens=24, do_sample=False,
                  pad_token_id=0)
        same_greedy = torch.equal(native.generate(prompt, **kw), ref.generate(prompt, **kw))
    ours = tok(TEXT, add_special_tokens=False)["input_ids"]
    same_tok = gtok(TEXT, add_special_tokens=False)["input_ids"] == ours and gtok.decode(ours) == tok.decode(ours)
    return r, meta, diff, same_greedy, same_tok


@pytest.mark.parametrize("name", PRESETS)
def test_every_native_preset_roundtrips(name, char_tok, tmp_path, one_thread):
    model = _model(name, char_tok)
    r, meta, diff, same_greedy, same_tok = _roundtrip(model, char_tok, tmp_path / "m.gguf", "q8_0")
    assert diff <= 1e-4 and same_greedy and same_tok, (name, diff, same_greedy, same_tok)
    assert meta["general.architecture"] == {"tiny-char": "gpt2", "gpt2": "gpt2", "mistral": "llama"}.get(name, name)
    assert "Q8_0" in r.tensor_types and r.size_bytes == (tmp_path / "m.gguf").stat().st_size
    # llama.cpp's reading of the same metadata (keys it needs for these architectures)
    arch = meta["general.architecture"]
    assert meta[f"{arch}.block_count"] == (4 if name == "tiny-char" else 6)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.add_bos_token"] is False
    if name == "tiny-char":  # learned positions: a row for each position of llama.cpp's smallest context (256)
        assert r.context_length == 64 and r.file_context == meta["gpt2.context_length"] == 256
        assert meta["slm_blocks.trained_context_length"] == 64 and meta["__tensors__"]["position_embd.weight"][1][1] == 256
        assert any("p mod 64" in n for n in r.notes), r.notes
    if name == "mistral":  # no sliding window in llama.cpp's llama: the context stops at the window
        assert r.context_length == 128 and meta["llama.context_length"] == 128 and r.notes
    if name == "gemma3":
        assert meta["gemma3.attention.sliding_window_pattern"] == [True, True, False, True, True, False]
        assert meta["gemma3.rope.freq_base_swa"] == 10000.0
    if name == "qwen3":
        assert meta["qwen3.attention.key_length"] == 48


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_byte_and_bpe_tokenizers_roundtrip_in_f16(kind, tmp_path, one_thread):
    tok = build_tokenizer(kind, TEXT * 20, vocab_size=300)
    model = _model("llama", tok)
    r, meta, diff, same_greedy, same_tok = _roundtrip(model, tok, tmp_path / "m.gguf", "f16")
    assert diff <= 1e-4 and same_greedy and same_tok, (kind, diff, same_greedy, same_tok)
    assert set(r.tensor_types) == {"F16", "F32"}
    if kind == "bpe":
        assert meta["tokenizer.ggml.merges"] > 0


def test_trained_model_export_verifies_in_a_fresh_process(trained_tiny_char, tmp_path):
    run = trained_tiny_char
    out = tmp_path / "gguf"
    r = export_gguf(run.load_model(), run.tokenizer, out, "q8_0", name="tiny shakespeare")
    assert r.verified and r.greedy_match and r.tokenizer_match and r.max_abs_diff <= 1e-4, r
    files = sorted(p.name for p in out.iterdir())
    assert files == ["Modelfile", "README.md", "export_result.json", "tiny-shakespeare-q8_0.gguf"], files
    card = (out / "README.md").read_text()
    for needle in ("llama-completion -m tiny-shakespeare-q8_0.gguf", "Past the trained context", "num_ctx 64", "ollama create", "llama_cpp import Llama",
                   'gguf_file="tiny-shakespeare-q8_0.gguf"', "Verified at export"):
        assert needle in card, needle
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./tiny-shakespeare-q8_0.gguf" in modelfile and "num_ctx 64" in modelfile
    assert json.loads((out / "export_result.json").read_text())["verified"] is True
    # q8_0 is about a quarter of the fp32 weights and keeps the held-out loss
    fp32_bytes = sum(p.numel() * 4 for n, p in run.load_model().named_parameters())
    assert r.size_bytes < 0.35 * fp32_bytes
    # importing the file gives back the model with the file's weights
    model, tok, spec = import_gguf(out / r.file)
    assert spec.max_seq_len == 64  # the trained positions, not the rows padded for llama.cpp
    ids = run.val_tokens[:64][None]
    with torch.no_grad():
        ref = rounded_model(run.load_model(), "q8_0")(ids).logits
        assert float((model(ids).logits - ref).abs().max()) <= 1e-4
    assert tok("ROMEO:")["input_ids"] == run.tokenizer("ROMEO:")["input_ids"]


FREE = {"name": "free", "vocab_size": 65, "d_model": 64, "max_seq_len": 32, "blocks": [
    {"type": "embedding"}, {"type": "positional", "kind": "rope"},
    {"type": "attention", "attention": {"n_heads": 4}}, {"type": "mlp", "mlp": {"activation": "silu", "gated": True}},
    {"type": "final_norm"}, {"type": "lm_head"}]}


def _alibi():
    d = load_preset("llama").to_dict()
    d["blocks"][1] = {"type": "positional", "kind": "alibi"}
    return ModelSpec.from_dict(d)


def _gelu_gpt2():
    d = load_preset("tiny-char").to_dict()
    d["blocks"][2]["mlp"]["activation"] = "gelu"
    return ModelSpec.from_dict(d)


@pytest.mark.parametrize("spec, words", [
    (ModelSpec.from_dict(FREE), ["free layer order", "llama.cpp"]),
    (_alibi(), ["ALiBi", "llama.cpp"]),
    (_gelu_gpt2(), ["tanh GELU", "gelu_tanh"]),
])
def test_unsupported_shapes_are_refused_with_the_reason(spec, words, char_tok, tmp_path):
    arch, why = gguf_support(spec)
    assert arch is None and all(w in why for w in words), why
    model = build_model(spec.copy(vocab_size=len(char_tok)))
    with pytest.raises(GGUFError) as e:
        export_gguf(model, char_tok, tmp_path / "out", verify=False)
    assert all(w in str(e.value) for w in words), e.value
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_unicode_char_vocabulary_and_bad_quant_are_refused(tmp_path):
    tok = build_tokenizer("char", "café crème brûlée " * 5)
    model = _model("tiny-char", tok)
    with pytest.raises(GGUFError, match="byte or bpe tokenizer"):
        export_gguf(model, tok, tmp_path / "out")
    with pytest.raises(GGUFError, match="q4_k.*f16, q8_0"):
        export_gguf(model, build_tokenizer("byte"), tmp_path / "out2", "q4_k")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_or_foreign_gguf_files_give_a_message(char_tok, tmp_path):
    good = tmp_path / "good.gguf"
    write_gguf(_model("tiny-char", char_tok), char_tok, good, "f16")
    data = good.read_bytes()
    cases = {"truncated.gguf": data[: len(data) // 2], "junk.gguf": b"not a gguf file at all" * 4, "empty.gguf": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(GGUFReadError) as e:
            import_gguf(tmp_path / name)
        msg = str(e.value)
        assert name in msg and "not a valid GGUF file" in msg and "Traceback" not in msg, msg
    with pytest.raises(GGUFReadError, match="does not exist"):
        read_metadata(tmp_path / "missing.gguf")


def test_llama_cpp_runs_the_file_like_the_model(trained_tiny_char, tmp_path):
    """An independent runtime: llama.cpp (llama-cpp-python) on the exported file vs our model holding the same
    q8_0 weights. llama.cpp also rounds activations to 8 bits inside q8_0 matmuls, hence the looser bound."""
    llama_cpp = pytest.importorskip("llama_cpp")
    run = trained_tiny_char
    model = run.load_model()
    path = tmp_path / "m.gguf"
    write_gguf(model, run.tokenizer, path, "q8_0")
    ref = rounded_model(model, "q8_0")
    prompt = "ROMEO:\nWhat shall"
    ids = run.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == ids
    llm.eval(ids)
    got = torch.tensor(llm.scores[: len(ids)])
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0]
    assert float((got - want).abs().max()) < 0.05, float((got - want).abs().max())
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    out = llm.create_completion(prompt, max_tokens=20, temperature=0.0, top_k=1)["choices"][0]["text"]
    from slm_blocks.model.generation import SamplingConfig, generate_text

    assert out == generate_text(ref, run.tokenizer, prompt, SamplingConfig(max_new_tokens=20, temperature=0.0))
