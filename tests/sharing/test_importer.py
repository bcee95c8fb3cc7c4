"""Importing Hugging Face folders: our own exports round-trip bit for bit; native GPT-2 / Llama / Mistral /
Qwen3 / Gemma 3 checkpoints give the same logits; what cannot be imported faithfully is refused with a clear
message; and import never runs code from the folder (no pickles, no trust_remote_code)."""

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import EXPORT_GREEDY, EXPORT_PROMPT, export_specs
from slm_blocks import ModelSpec
from slm_blocks.sharing.export import export_hf
from slm_blocks.sharing.importer import ImportFailed, import_hf, spec_from_native_config
from slm_blocks.sharing.native import native_family

NAMES = list(export_specs())
SRC = Path(__file__).resolve().parents[2] / "slm_blocks"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- our exports round-trip


@pytest.mark.parametrize("name", NAMES)
def test_export_import_export_round_trip(name, trained_exports, tmp_path, monkeypatch):
    e = trained_exports[name]
    refs = load_file(e.refs)
    model, tok, spec = import_hf(e.out_dir)
    assert spec == ModelSpec.from_json((e.out_dir / "slm_spec.json").read_text())
    assert tok is not None and len(tok) == spec.vocab_size
    assert tok(EXPORT_PROMPT, add_special_tokens=False)["input_ids"] == refs["prompt"][0].tolist()
    with torch.no_grad():
        logits = model(refs["ids"], use_cache=False).logits
        p = refs["prompt"]
        greedy = model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=EXPORT_GREEDY,
                                min_new_tokens=EXPORT_GREEDY, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(logits, refs["logits"]), "the imported model must be the trained model exactly"
    assert torch.equal(greedy, refs["greedy"])
    # export again: identical weights, config, spec and tokenizer (the model card may differ: no history)
    monkeypatch.setattr("slm_blocks.sharing.export._verify", lambda m, out, remote_code, **kw: (0.0, True))  # checked above
    r = export_hf(model, tok, tmp_path / "again")
    assert (r.model_class, r.native) == (e.result.model_class, e.result.native)
    a, b = load_file(e.out_dir / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    for f in ("config.json", "generation_config.json", "slm_spec.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "again" / f).read_text() == (e.out_dir / f).read_text(), f
    assert sorted(p.name for p in (tmp_path / "again").glob("*.py")) == sorted(p.name for p in e.out_dir.glob("*.py"))


def test_import_does_not_unpickle(trained_exports, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("import_hf must not unpickle anything")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    for name in ("tiny-char", "gemma3", "free-order"):
        import_hf(trained_exports[name].out_dir)


POISON = "import pathlib\npathlib.Path({marker!r}).write_text('executed')\nraise RuntimeError('poisoned code ran')\n"


@pytest.mark.parametrize("name", ["free-order", "llama"])
def test_import_never_runs_code_from_the_folder(name, trained_exports, tmp_path):
    """Every .py in the folder (and an auto_map pointing at it) would leave a marker if executed."""
    e = trained_exports[name]
    folder = tmp_path / "poisoned"
    shutil.copytree(e.out_dir, folder)
    marker = tmp_path / "EXECUTED"
    for f in ["modeling.py", "configuration.py", "tokenization.py", *[p.name for p in folder.glob("*.py")]]:
        (folder / f).write_text(POISON.format(marker=str(marker)))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration.EvilConfig", "AutoModelForCausalLM": "modeling.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    model, tok, spec = import_hf(folder)
    assert not marker.exists(), "import_hf executed code from the folder"
    refs = load_file(e.refs)
    with torch.no_grad():
        assert torch.equal(model(refs["ids"], use_cache=False).logits, refs["logits"])


def test_poisoned_tokenizer_auto_map_never_runs(trained_exports, tmp_path):
    folder = tmp_path / "poisoned"
    shutil.copytree(trained_exports["tiny-char"].out_dir, folder)
    marker = tmp_path / "EXECUTED"
    (folder / "tokenization_evil.py").write_text(POISON.format(marker=str(marker)))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", "tokenization_evil.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    try:
        import_hf(folder)
    except (ImportFailed, ValueError, OSError):
        pass  # refusing is fine; running the code is not
    assert not marker.exists(), "import_hf executed the tokenizer's remote code"


def test_import_source_never_trusts_remote_code():
    """No call in hf_import.py (or the tokenizer loader it uses) passes trust_remote_code other than False,
    and nothing there unpickles."""
    for path in (SRC / "sharing/importer.py", SRC / "training/tokenization.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "trust_remote_code":
                        assert isinstance(kw.value, ast.Constant) and kw.value.value is False, \
                            f"{path.name}:{node.lineno} passes trust_remote_code"
                func = ast.unparse(node.func)
                assert func not in ("torch.load", "pickle.load", "pickle.loads", "load_state_dict_from_url"), \
                    f"{path.name}:{node.lineno} calls {func}"
    code = (SRC / "sharing/importer.py").read_text()
    assert "from_pretrained(" not in code, "hf_import must not load models through transformers' loaders"


# ----------------------------------------------------------------------------- native checkpoints

T, V = 24, 50
TOKENS = dict(bos_token_id=0, eos_token_id=1, pad_token_id=2)
NATIVE = {
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=T, vocab_size=V),
    "gpt2-untied-gelu": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=T, vocab_size=V,
                             n_inner=48, activation_function="gelu", tie_word_embeddings=False),
    "llama": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=T, vocab_size=V,
                  rope_parameters={"rope_type": "default", "rope_theta": 5000.0}),
    "llama-bias-tied": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=T, vocab_size=V, attention_bias=True,
                            tie_word_embeddings=True),
    "mistral": dict(model_type="mistral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=T, vocab_size=V,
                    sliding_window=8),
    "qwen3": dict(model_type="qwen3", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=T,
                  vocab_size=V, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    "gemma3_text": dict(model_type="gemma3_text", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8,
                        max_position_embeddings=T, vocab_size=V, sliding_window=6,
                        layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
}
FAMILY = {"gpt2": "gpt2", "llama": "llama", "mistral": "mistral", "qwen3": "qwen3", "gemma3_text": "gemma3"}


def _native(folder: Path, model_type: str, **kw):
    """A tiny native model with every weight (norms and biases included) moved off its init, saved as safetensors."""
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**TOKENS, **kw})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def _max_diff(ours, theirs) -> float:
    ids = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))  # T > every sliding window
    with torch.no_grad():
        return float((ours(ids, use_cache=False).logits - theirs(ids, use_cache=False).logits).abs().max())


@pytest.mark.parametrize("case", list(NATIVE))
def test_native_checkpoint_imports_with_same_logits(case, tmp_path):
    kw = dict(NATIVE[case])
    mt = kw.pop("model_type")
    native = _native(tmp_path, mt, **kw)
    assert not list(tmp_path.glob("*.bin"))
    model, tok, spec = import_hf(tmp_path)
    assert tok is None  # no tokenizer files in this folder
    assert native_family(spec)[0] == FAMILY[mt], "an imported checkpoint should export back to its own class"
    assert spec.tie_embeddings == native.config.tie_word_embeddings
    assert _max_diff(model, native) <= 1e-5
    with torch.no_grad():  # and the KV-cached greedy path agrees
        p = torch.tensor([[3, 4, 5, 6]])
        a = model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=12, min_new_tokens=12,
                           do_sample=False, pad_token_id=2)
        b = native.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=12, min_new_tokens=12,
                            do_sample=False, pad_token_id=2)
    assert torch.equal(a, b)


def test_gemma3_query_pre_attn_scalar_is_honoured_or_refused(tmp_path):
    """Gemma 3 scales queries by query_pre_attn_scalar**-0.5 (e.g. 27B: head_dim 128, scalar 168). The
    importer must either reproduce it or refuse; silently using head_dim gives different logits."""
    kw = {**NATIVE["gemma3_text"], "query_pre_attn_scalar": 32}
    kw.pop("model_type")
    native = _native(tmp_path, "gemma3_text", **kw)
    try:
        model, _, _ = import_hf(tmp_path)
    except ImportFailed as e:
        assert "query_pre_attn_scalar" in str(e)
        return
    assert _max_diff(model, native) <= 1e-5, "query_pre_attn_scalar != head_dim was imported with wrong logits"


@pytest.mark.parametrize("mt, key, value", [
    ("qwen3", "hidden_act", "gelu"), ("mistral", "hidden_act", "gelu"),
    ("gemma3_text", "hidden_activation", "relu"), ("gemma3_text", "final_logit_softcapping", 30.0),
])
def test_unsupported_native_options_are_honoured_or_refused(mt, key, value, tmp_path):
    """Options the block spec cannot express must not be dropped silently."""
    kw = {**NATIVE[mt], key: value}
    kw.pop("model_type")
    native = _native(tmp_path, mt, **kw)
    try:
        model, _, _ = import_hf(tmp_path)
    except ImportFailed:
        return
    assert _max_diff(model, native) <= 1e-5, f"{mt} with {key}={value!r} was imported with wrong logits"


def _legacy_config(folder: Path, **extra) -> None:
    """Rewrite config.json the way transformers 4 wrote it (most Hub checkpoints): no rope_parameters,
    a top-level rope_theta (and rope_scaling)."""
    cfg = json.loads((folder / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope["rope_theta"]
    cfg.update(extra)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_legacy_config_rope_theta_is_read(tmp_path):
    kw = {**NATIVE["llama"], "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}
    kw.pop("model_type")
    _native(tmp_path, "llama", **kw)
    _legacy_config(tmp_path)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert theirs.config.rope_parameters["rope_theta"] == 500000.0  # transformers reads the old format
    model, _, spec = import_hf(tmp_path)
    assert _max_diff(model, theirs) <= 1e-5, f"legacy rope_theta 500000 ignored (spec uses {spec.to_dict()['blocks'][1]})"


@pytest.mark.parametrize("scaling", [{"type": "linear", "factor": 4.0},
                                     {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8}])
def test_legacy_config_rope_scaling_is_refused(scaling, tmp_path):
    kw = dict(NATIVE["llama"])
    kw.pop("model_type")
    _native(tmp_path, "llama", **kw)
    _legacy_config(tmp_path, rope_scaling=scaling)
    with pytest.raises(ImportFailed, match="RoPE scaling"):
        import_hf(tmp_path)


# ----------------------------------------------------------------------------- clear refusals


def _llama_folder(folder: Path, **kw):
    base = dict(NATIVE["llama"])
    base.pop("model_type")
    return _native(folder, "llama", **{**base, **kw})


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path):
    _llama_folder(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    marker = tmp_path / "UNPICKLED"

    class Evil:
        def __reduce__(self):
            return open, (str(marker), "w")

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ImportFailed) as info:
        import_hf(tmp_path)
    assert "safetensors" in str(info.value)
    assert not marker.exists(), "the .bin file was unpickled"


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.ckpt"])
def test_garbage_bin_is_refused_with_safetensors_hint(name, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", **{k: v for k, v in NATIVE["gpt2"].items()
                                                                              if k != "model_type"}}))
    (tmp_path / name).write_bytes(b"\x80\x04garbage, not a pickle \x00\xff" * 10)
    with pytest.raises(ImportFailed, match="safetensors"):
        import_hf(tmp_path)


def test_sharded_index_pointing_outside_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    _llama_folder(folder)
    shutil.move(folder / "model.safetensors", tmp_path / "outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "../outside.safetensors"}}))
    with pytest.raises(ImportFailed, match="outside"):
        import_hf(folder)


def test_sharded_checkpoint_imports(tmp_path):
    native = _llama_folder(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for fname, ks in shards.items():
        save_file({k: state[k] for k in ks}, tmp_path / fname, metadata={"format": "pt"})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
    model, _, _ = import_hf(tmp_path)
    assert _max_diff(model, native) <= 1e-5


def test_missing_config_is_refused(tmp_path):
    with pytest.raises(ImportFailed, match="config.json"):
        import_hf(tmp_path)


@pytest.mark.parametrize("model_type", ["bert", "phi3", None])
def test_unknown_model_type_is_refused(model_type, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": 32}))
    save_file({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(ImportFailed) as info:
        import_hf(tmp_path)
    assert repr(model_type) in str(info.value) and "supported" in str(info.value)


@pytest.mark.parametrize("mt, rope", [
    ("llama", {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    ("llama", {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}),
    ("llama", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 8}),
    ("qwen3", {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    ("gemma3_text", {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
])
def test_rope_scaling_is_refused(mt, rope, tmp_path):
    cfg = {**NATIVE[mt], "rope_parameters": rope}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ImportFailed, match="RoPE scaling"):
        spec_from_native_config(cfg)
    save_file({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(ImportFailed, match="RoPE scaling"):
        import_hf(tmp_path)


def test_mismatched_weights_are_refused(tmp_path):
    _llama_folder(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ImportFailed, match="do not match"):
        import_hf(tmp_path)


def test_non_periodic_sliding_layers_are_refused(tmp_path):
    cfg = {**NATIVE["gemma3_text"], "layer_types": ["full_attention", "sliding_attention", "sliding_attention"]}
    with pytest.raises(ImportFailed, match="periodic"):
        spec_from_native_config(cfg)
