"""Bad files and names: malformed safetensors, unsafe names, refused uploads, generation settings."""

import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from slm_blocks import build_model, load_preset
from slm_blocks.sharing.export import export_hf
from slm_blocks.sharing.importer import ImportFailed, import_hf
from slm_blocks.training.tokenization import build_tokenizer
from slm_blocks.ui.handlers import Handlers
from slm_blocks.ui.state import Limits, SessionStore, safe_filename, safe_name
from slm_blocks.ui.uploads import UserError, copy_data_uploads


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tok = build_tokenizer("byte")
    spec = load_preset("llama").copy(vocab_size=len(tok), max_seq_len=64)
    spec.blocks[2].repeat = 1
    out = tmp_path_factory.mktemp("exp") / "llama"
    export_hf(build_model(spec), tok, out)
    return out


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["truncated", "huge_header", "garbage"])
def test_malformed_safetensors_give_a_clear_error(exported, tmp_path, damage):
    d = _copy(exported, tmp_path)
    path = d / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[: len(raw) // 2], "huge_header": struct.pack("<Q", 10**15) + b"{}",
                      "garbage": b"\x00" * 64}[damage])
    with pytest.raises(ImportFailed, match="not a valid safetensors file"):
        import_hf(d)


def test_wrong_shapes_and_missing_keys_give_a_clear_error(exported, tmp_path):
    d = _copy(exported, tmp_path)
    state = load_file(d / "model.safetensors")
    key = next(k for k in state if k.endswith("q_proj.weight"))
    state[key] = torch.zeros(3, 3)
    save_file(state, d / "model.safetensors")
    with pytest.raises(ImportFailed, match="do not fit"):
        import_hf(d)
    del state[key]
    save_file(state, d / "model.safetensors")
    with pytest.raises(ImportFailed, match="missing"):
        import_hf(d)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/path", "a\x00b", "ｆｕｌｌ　ｗｉｄｔｈ", "..", "", "名前",
                                  "x" * 500, "con.txt/../../.."])
def test_names_are_made_safe(name):
    for out in (safe_name(name), safe_filename(name)):
        assert out and "/" not in out and "\x00" not in out and ".." not in out
        assert out.isascii() and len(out) <= 60 and not out.startswith(".")


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer_config.json", "slm_spec.json", "tokenizer.json",
                                  "special_tokens_map.json", "generation_config.json", "config.json"])
def test_export_file_names_survive_upload(name):
    assert safe_filename(name) == name  # import finds the files of an export by these exact names


def test_pickle_uploads_refused_and_uploads_stay_in_the_session(tmp_path):
    store = SessionStore(Limits(data_dir=tmp_path, max_upload_mb=1))
    session = store.get("s1")

    def _uploads(store, session, files):
        return copy_data_uploads(files, session.root / "uploads", store.limits.max_upload_mb)

    for ext in (".pt", ".bin", ".pkl"):
        f = tmp_path / f"weights{ext}"
        f.write_bytes(b"\x80\x04junk")
        with pytest.raises(UserError, match="pickle"):
            _uploads(store, session, [str(f)])
    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (2 * 1024 * 1024))
    with pytest.raises(UserError, match="larger than 1 MB"):
        _uploads(store, session, [str(big)])
    odd = tmp_path / "..evil name.txt"
    odd.write_text("hello world\n" * 10)
    (path,) = _uploads(store, session, [str(odd)])
    assert str(session.root.resolve()) in str(type(session.root)(path).resolve())


@pytest.mark.parametrize("kw, field", [
    ({"temperature": -1}, "Temperature"), ({"temperature": float("nan")}, "Temperature"),
    ({"top_p": 0}, "Top-p"), ({"top_p": 1.5}, "Top-p"), ({"repetition_penalty": 0}, "Repetition penalty"),
    ({"max_new_tokens": "many"}, "Max new tokens"),
])
def test_bad_sampling_settings_are_refused_with_the_field(kw, field):
    args = {"max_new_tokens": 10, "temperature": 0.8, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0,
            "seed": None, **kw}
    with pytest.raises(UserError, match=field):
        Handlers._sampling(**args)


def test_sampling_settings_are_clamped():
    cfg = Handlers._sampling(max_new_tokens=10**9, temperature=99, top_k=10**6, top_p=1.0, repetition_penalty=1.0,
                             seed=None)
    assert cfg.max_new_tokens == 2000 and cfg.temperature == 10.0 and cfg.top_p is None


def test_session_disk_quota_refuses_new_training(tmp_path):
    store = SessionStore(Limits(data_dir=tmp_path, session_quota_mb=1))
    session = store.get("quota")
    (session.root / "uploads").mkdir(parents=True, exist_ok=True)
    (session.root / "uploads" / "big.txt").write_bytes(b"x" * (2 * 1024 * 1024))

    class Request:
        session_hash = "quota"

    job = {"spec": load_preset("tiny-char").to_json(), "run_name": "q",
           "train": {"max_steps": 10, "batch_size": 2, "max_time": 60, "eval_every": 5}}
    status, *_ = next(Handlers(store).train(job, None, None, Request()))
    assert "MB allowed" in status and not session.runs


def test_dependency_floors_and_no_torch_load():
    """Floors above known fixed advisories, and nothing in the package unpickles (torch.load / pickle)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    req = (root / "requirements.txt").read_text()
    assert re.search(r"^torch==2\.(1[0-9]|[2-9][0-9])\.", req, re.M), "torch must be >= 2.10"
    assert re.search(r"^gradio>=6\.(1[6-9]|[2-9][0-9])", req, re.M), "gradio must be >= 6.16"
    assert re.search(r"^mlflow>=3\.(8\.[1-9]|9|[1-9][0-9])", req, re.M), "mlflow must be >= 3.8.1"
    for path in (root / "slm_blocks").rglob("*.py"):
        text = path.read_text()
        assert "torch.load(" not in text and "pickle.load" not in text, path


# ----------------------------------------------------------------------------- import caps (issue 10, item 5)


def _no_allocation(monkeypatch):
    import slm_blocks.model.modeling as modeling

    def refuse(*a, **k):
        raise AssertionError("a model was allocated before the caps were checked")

    monkeypatch.setattr(modeling, "build_model", refuse)


@pytest.mark.parametrize("attack", ["huge_spec", "huge_context", "native_context", "gpt2_positions"])
def test_import_caps_refuse_before_allocation(exported, tmp_path, monkeypatch, attack):
    """A tiny weights file next to a config that describes a huge model is refused from the config alone."""
    import json

    from slm_blocks.training.job import Caps

    d = _copy(exported, tmp_path)
    if attack in ("huge_spec", "huge_context"):
        spec = json.loads((d / "slm_spec.json").read_text())
        if attack == "huge_spec":
            spec["d_model"] = 16384
            spec["blocks"][2]["repeat"] = 256
        else:
            spec["max_seq_len"] = 1 << 20
        (d / "slm_spec.json").write_text(json.dumps(spec))
    else:
        (d / "slm_spec.json").unlink()
        cfg = json.loads((d / "config.json").read_text())
        if attack == "native_context":
            cfg["max_position_embeddings"] = 10**9
        else:
            cfg = {"model_type": "gpt2", "vocab_size": 259, "n_embd": 64, "n_layer": 1, "n_head": 2,
                   "n_positions": 1 << 20}
        (d / "config.json").write_text(json.dumps(cfg))
    _no_allocation(monkeypatch)
    caps = Caps(max_params=30_000_000, max_train_mb=8192, max_context=4096)
    with pytest.raises(ImportFailed, match="too big for this app") as e:
        import_hf(d, caps=caps)
    assert str(tmp_path) not in str(e.value)


def test_gguf_caps_are_read_from_the_header():
    from slm_blocks.compress.gguf_read import GGUFReadError, check_caps
    from slm_blocks.training.job import Caps

    meta = {"general.architecture": "llama", "llama.context_length": 1 << 20,
            "__tensors__": {"token_embd.weight": ("F32", (64, 259)), "blk.0.ffn_up.weight": ("F32", (64, 10**8))}}
    with pytest.raises(GGUFReadError, match="parameters.*context") as e:
        check_caps(meta, Caps(max_params=30_000_000, max_context=4096))
    assert "6.4G" in str(e.value)
    meta["__tensors__"] = {"token_embd.weight": ("F32", (64, 259))}
    meta["llama.context_length"] = 256
    check_caps(meta, Caps(max_params=30_000_000, max_context=4096))  # a small model passes
