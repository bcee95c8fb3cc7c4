"""Starting from trained weights (`init_from`): a native GPT-2 / Llama / Mistral / Qwen3 / Gemma 3 folder, an exported
folder or a run continues from exactly the source model (its loss at step 0 is the source's loss on the same batch),
keeping its architecture and tokenizer; bad sources (offline Hub id, over the cap, pickles only, another tokenizer)
get a message naming the field and write nothing."""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import SHAKESPEARE, small_spec
from slm_blocks.grow.prepare import drive
from slm_blocks.training.events import ErrorEvent, StepEvent
from slm_blocks.training.job import Caps, Job
from slm_blocks.training.loop import get_batch
from slm_blocks.training.run import open_run
from slm_blocks.training.tokenization import build_tokenizer, save_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
T = 24
DATA = {"source": "files", "paths": [str(SHAKESPEARE)], "max_chars": 40_000}
FAMILIES = {
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=T),
    "llama": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=T),
    "mistral": dict(model_type="mistral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=T, sliding_window=8),
    "qwen3": dict(model_type="qwen3", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=12, max_position_embeddings=T),
    "gemma3_text": dict(model_type="gemma3_text", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8,
                        max_position_embeddings=T, sliding_window=6,
                        layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
}


def job(init_from=None, teacher=None, max_steps=1, data=DATA, **train):
    cfg = dict(max_steps=max_steps, batch_size=4, seq_len=T, warmup_steps=0, log_every=1, eval_every=0,
               sample_tokens=0, checkpoint_every=0, device="cpu", precision="fp32", seed=3)
    cfg.update(train)
    return Job.from_dict({"spec": small_spec(seq=T).to_dict(), "data": data, "train": cfg, "init_from": init_from,
                          "teacher": teacher})


def run(j, out, **kw):
    events = []
    code = drive(j, out, emit=events.append, track=False, **kw)
    return code, events


def native_folder(folder, family: str):
    """A tiny native checkpoint (weights moved off their init) with a char tokenizer over the training text."""
    text = SHAKESPEARE.read_text()[:40_000]
    tok = build_tokenizer("char", text)
    kw = dict(FAMILIES[family])
    torch.manual_seed(0)
    config = AutoConfig.for_model(kw.pop("model_type"), vocab_size=len(tok) + 5, bos_token_id=tok.eos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # far from any init: a random start would show
    model.save_pretrained(folder, safe_serialization=True)
    save_tokenizer(tok, folder)
    return model


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fine_tune_from_a_native_folder_starts_at_the_source_loss(family, tmp_path):
    native = native_folder(tmp_path / "src", family)
    code, events = run(job(init_from=str(tmp_path / "src")), tmp_path / "ft")
    assert code == 0, events[-1]
    first = next(e for e in events if isinstance(e, StepEvent))
    r = open_run(tmp_path / "ft")
    assert r.spec.vocab_size == native.config.vocab_size  # the source's architecture, embeddings and all
    assert r.meta["init_from"]["kind"] == "folder" and r.meta["init_from"]["source"] == "src"
    x, y = get_batch(r.train_tokens, 4, T, torch.Generator().manual_seed(3))  # the loop's first batch
    with torch.no_grad():
        ref = F.cross_entropy(native(x).logits.flatten(0, 1), y.flatten())
    assert abs(first.loss - float(ref)) <= 1e-4, (first.loss, float(ref))
    assert r.tokenizer.get_vocab() == build_tokenizer("char", SHAKESPEARE.read_text()[:40_000]).get_vocab()


def test_fine_tune_from_a_run_keeps_its_architecture_and_continues(tmp_path):
    code, _ = run(job(max_steps=3, data={"source": "builtin", "max_chars": 30_000}), tmp_path / "base")
    assert code == 0
    base = open_run(tmp_path / "base")
    model = base.load_model()
    code, events = run(job(init_from=str(tmp_path / "base"), max_steps=2, seed=9), tmp_path / "ft")
    assert code == 0, events[-1]
    ft = open_run(tmp_path / "ft")
    assert ft.spec == base.spec and ft.tokenizer.get_vocab() == base.tokenizer.get_vocab()
    x, y = get_batch(ft.train_tokens, 4, T, torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
    first = next(e for e in events if isinstance(e, StepEvent))
    assert abs(first.loss - float(ref)) <= 1e-5
    assert ft.meta["init_from"] == {"source": "base", "kind": "run", "params": ft.meta["init_from"]["params"],
                                    "architecture": base.spec.summary()}


def test_a_hub_id_offline_is_refused_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # 'someone/model' is no folder here
    code, events = run(job(init_from="someone/model"), tmp_path / "x")
    assert code == 2 and isinstance(events[-1], ErrorEvent)
    msg = events[-1].message
    assert "init_from" in msg and "someone/model" in msg and "Hub" in msg and "Traceback" not in msg, msg
    assert not (tmp_path / "x").exists()


def test_pickles_only_and_over_the_cap_are_refused_before_any_weights_are_read(tmp_path, monkeypatch):
    native_folder(tmp_path / "src", "llama")
    import safetensors.torch

    def no_read(*a, **k):
        raise AssertionError("weights were read before the cap was checked")

    monkeypatch.setattr(safetensors.torch, "load_file", no_read)
    code, events = run(job(init_from=str(tmp_path / "src")), tmp_path / "capped", caps=Caps(max_params=5_000))
    assert code == 2 and "init_from" in events[-1].message and "over this app's cap" in events[-1].message
    assert not (tmp_path / "capped").exists()
    code, events = run(job(teacher={"source": str(tmp_path / "src")}), tmp_path / "capped", caps=Caps(max_params=5_000))
    assert code == 2 and "teacher.source" in events[-1].message and "cap" in events[-1].message
    (tmp_path / "src" / "model.safetensors").rename(tmp_path / "src" / "pytorch_model.bin")
    code, events = run(job(init_from=str(tmp_path / "src")), tmp_path / "pickle")
    msg = events[-1].message
    assert code == 2 and "init_from" in msg and "safetensors" in msg and "pytorch_model.bin" in msg, msg
    assert not (tmp_path / "pickle").exists()


class FakeHub:
    """The huggingface_hub boundary, serving one local folder as `owner/model`; records what was fetched."""

    def __init__(self, folder, extra=("modeling_evil.py", "pytorch_model.bin", "onnx/model.safetensors")):
        self.folder, self.fetched, self.snapshots = folder, [], []
        for name in extra:
            (folder / name).parent.mkdir(exist_ok=True)
            (folder / name).write_bytes(b"never download me")

    def install(self, monkeypatch):
        import huggingface_hub

        hub = self

        class Api:
            def __init__(self, token=None):
                pass

            def list_repo_files(self, repo, token=None):
                return sorted(str(p.relative_to(hub.folder)) for p in hub.folder.rglob("*") if p.is_file())

            def get_safetensors_metadata(self, repo, token=None):
                raise RuntimeError("no metadata endpoint here")

        def download(repo, filename, token=None):
            hub.fetched.append(filename)
            return str(hub.folder / filename)

        def snapshot(repo, allow_patterns, token=None):
            hub.snapshots.append(list(allow_patterns))
            out = hub.folder.parent / "snapshot"
            out.mkdir(exist_ok=True)
            for name in allow_patterns:
                (out / name).write_bytes((hub.folder / name).read_bytes())
            return str(out)

        monkeypatch.setattr(huggingface_hub, "HfApi", Api)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)


def test_a_hub_id_downloads_only_config_safetensors_and_tokenizer_after_the_cap(tmp_path, monkeypatch):
    native_folder(tmp_path / "repo", "qwen3")
    hub = FakeHub(tmp_path / "repo")
    hub.install(monkeypatch)
    monkeypatch.chdir(tmp_path)
    code, events = run(job(init_from="owner/model"), tmp_path / "capped", caps=Caps(max_params=5_000))
    assert code == 2 and "init_from" in events[-1].message and "cap" in events[-1].message
    assert hub.fetched == ["config.json"] and hub.snapshots == [], "nothing but the config before the cap check"
    code, events = run(job(init_from="owner/model"), tmp_path / "ft")
    assert code == 0, events[-1]
    (files,) = hub.snapshots
    assert "model.safetensors" in files and "tokenizer.json" in files and "config.json" in files
    assert not [f for f in files if f.endswith((".py", ".bin")) or "/" in f], files
    assert open_run(tmp_path / "ft", load_data=False).meta["init_from"]["source"] == "owner/model"


def test_a_teacher_with_another_tokenizer_is_refused_and_nothing_is_written(tmp_path):
    assert run(job(max_steps=2, data={"source": "builtin", "max_chars": 30_000}), tmp_path / "stories")[0] == 0
    assert run(job(max_steps=2), tmp_path / "plays")[0] == 0
    code, events = run(job(init_from=str(tmp_path / "stories"), teacher={"source": str(tmp_path / "plays")}),
                       tmp_path / "mixed")
    msg = events[-1].message
    assert code == 2 and "teacher.source" in msg and "tokenizer" in msg, msg
    assert not (tmp_path / "mixed").exists()
    # an explicitly chosen tokenizer that is not the teacher's is refused too (not silently replaced)
    j = job(teacher={"source": str(tmp_path / "plays")})
    j.tokenizer.kind = "byte"
    code, events = run(j, tmp_path / "byte")
    assert code == 2 and "teacher.source" in events[-1].message and "byte" in events[-1].message
    assert not (tmp_path / "byte").exists()
    assert json.loads((tmp_path / "plays" / "run.json").read_text())["spec"]  # the sources are untouched


def test_the_app_never_reads_a_hub_id_as_a_folder_of_its_working_directory(tmp_path, monkeypatch):
    from slm_blocks.grow.source import locate
    from slm_blocks.training.job import JobError

    native_folder(tmp_path / "owner" / "model", "llama")
    monkeypatch.chdir(tmp_path)
    assert locate("owner/model", "init_from").kind == "folder"  # the command line: a local folder wins
    with pytest.raises(JobError, match="not a Hub id|Hugging Face Hub"):  # the app: never that folder
        locate("owner/model", "init_from", hub_only=True)
