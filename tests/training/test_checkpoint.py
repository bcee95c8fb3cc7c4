"""Checkpoints: atomic, safetensors + JSON only, keep-last-N, exact restore of weights, optimizer and RNG."""

import json
import shutil

import pytest
import torch
from conftest import small_spec
from safetensors.torch import load_file

from slm_blocks import build_model
from slm_blocks.training.config import TrainConfig
from slm_blocks.training.checkpoint import checkpoint_dirs, latest_checkpoint, load_checkpoint, save_checkpoint
from slm_blocks.training.optim import MuonAdamW, make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


Cfg = TrainConfig(lr=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.1, optimizer="adamw", muon_momentum=0.95)
MuonCfg = TrainConfig(**{**Cfg.to_dict(), "optimizer": "muon"})


def trained(seed=0, tie=True, steps=2, cfg=Cfg):
    """A tiny model and its optimizer after a couple of updates (so the moments are non-zero)."""
    torch.manual_seed(seed)
    spec = small_spec(tie=tie).copy(vocab_size=40)
    model = build_model(spec)
    opt = make_optimizer(model, cfg)
    for _ in range(steps):
        x = torch.randint(0, 40, (2, 9))
        loss = torch.nn.functional.cross_entropy(model(input_ids=x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def rng():
    return {"torch_rng": torch.get_rng_state(), "data_rng_0": torch.Generator().manual_seed(5).get_state()}


def save(tmp_path, step, model, opt, keep_last=3, state=None):
    return save_checkpoint(tmp_path, step, model, opt, rng(), state or {"tokens_seen": step * 10}, keep_last=keep_last)


def test_keep_last_n(tmp_path):
    model, opt = trained(steps=1)
    for step in (1, 2, 3, 4, 5):
        save(tmp_path, step, model, opt, keep_last=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000004", "step-000005"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000004", "step-000005"]
    save(tmp_path, 6, model, opt, keep_last=0)  # 0 = keep all
    assert len(checkpoint_dirs(tmp_path)) == 3


def test_steps_sort_numerically_past_six_digits(tmp_path):
    model, opt = trained(steps=1)
    save(tmp_path, 999_999, model, opt)
    save(tmp_path, 1_000_000, model, opt)
    assert latest_checkpoint(tmp_path).name == "step-1000000"


def test_incomplete_and_temporary_dirs_are_ignored(tmp_path):
    model, opt = trained(steps=1)
    good = save(tmp_path, 5, model, opt)
    root = tmp_path / "checkpoints"
    shutil.copytree(good, root / ".tmp-step-000009-4242")  # a crashed write: complete files, temporary name
    half = root / "step-000010"  # a folder without trainer_state.json
    half.mkdir()
    shutil.copy(good / "model.safetensors", half / "model.safetensors")
    (root / "notes").mkdir()
    (root / "step-7").mkdir()
    assert latest_checkpoint(tmp_path) == good
    assert checkpoint_dirs(tmp_path) == [good]
    assert latest_checkpoint(tmp_path / "nothing-here") is None
    # a later save at the half-written step replaces it with a complete checkpoint
    again = save(tmp_path, 10, model, opt)
    assert (again / "trainer_state.json").is_file() and latest_checkpoint(tmp_path) == again
    assert not list(root.glob(".tmp-step-000010-*"))


def test_only_safetensors_and_json_inside(tmp_path):
    model, opt = trained()
    path = save(tmp_path, 3, model, opt)
    names = sorted(p.name for p in path.iterdir())
    assert names == ["model.safetensors", "optimizer.json", "optimizer.safetensors", "state.safetensors",
                     "trainer_state.json"]
    for p in path.iterdir():
        if p.suffix == ".safetensors":
            load_file(p)  # parses as safetensors
        else:
            json.loads(p.read_text())
        assert not p.read_bytes().startswith(b"\x80")  # no pickle protocol header anywhere
    state = json.loads((path / "trainer_state.json").read_text())
    assert state == {"tokens_seen": 30, "step": 3}


def test_checkpoint_module_never_unpickles():
    import inspect

    import slm_blocks.training.checkpoint as ck

    src = inspect.getsource(ck).split('"""', 2)[2]  # the code, not the docstring that names torch.load
    assert "torch.load" not in src and "pickle" not in src


@pytest.mark.parametrize("cfg", [Cfg, MuonCfg], ids=["adamw", "muon"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_load_restores_weights_optimizer_and_rng(tmp_path, tie, cfg):
    model, opt = trained(seed=0, tie=tie, cfg=cfg)
    assert isinstance(opt, MuonAdamW) is (cfg is MuonCfg)
    saved_rng = rng()
    path = save_checkpoint(tmp_path, 7, model, opt, saved_rng, {"tokens_seen": 70, "best_val_loss": 1.5}, 3)

    keys = load_file(path / "model.safetensors").keys()
    assert ("lm_head.weight" in keys) is (not tie)  # tied: stored once, under the embedding

    fresh, fresh_opt = trained(seed=99, tie=tie, steps=0, cfg=cfg)
    assert not torch.equal(fresh.model.embed_tokens.weight, model.model.embed_tokens.weight)
    state, got_rng = load_checkpoint(path, fresh, fresh_opt)
    assert state == {"tokens_seen": 70, "best_val_loss": 1.5, "step": 7}
    assert got_rng.keys() == saved_rng.keys()
    assert all(torch.equal(got_rng[k], saved_rng[k]) for k in saved_rng)

    ref, got = model.state_dict(), fresh.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    if tie:
        assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr(), "tie lost on load"
    else:
        assert fresh.lm_head.weight.data_ptr() != fresh.model.embed_tokens.weight.data_ptr()

    s_ref, s_got = opt.state_dict(), fresh_opt.state_dict()
    assert s_ref["state"].keys() == s_got["state"].keys() and s_ref["state"]
    for idx in s_ref["state"]:
        for key, value in s_ref["state"][idx].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(s_got["state"][idx][key])), (idx, key)
    for g_ref, g_got in zip(s_ref["param_groups"], s_got["param_groups"]):
        assert g_ref["params"] == g_got["params"]
        assert g_ref["lr"] == g_got["lr"] and g_ref["weight_decay"] == g_got["weight_decay"]
        assert tuple(g_ref.get("betas", ())) == tuple(g_got.get("betas", ()))

    # one more identical update on both gives identical weights (moments and step counts really restored)
    torch.manual_seed(3)
    x = torch.randint(0, 40, (2, 9))
    for m, o in ((model, opt), (fresh, fresh_opt)):
        loss = torch.nn.functional.cross_entropy(m(input_ids=x[:, :-1]).logits.flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        o.step()
        o.zero_grad()
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), f"{k} diverges one step after loading"


def test_load_weights_only_and_mismatch_is_a_clear_error(tmp_path):
    model, opt = trained()
    path = save(tmp_path, 1, model, opt)
    fresh, _ = trained(seed=5, steps=0)
    state, _ = load_checkpoint(path, fresh)  # no optimizer: weights only
    assert state["step"] == 1
    assert torch.equal(fresh.model.embed_tokens.weight, model.model.embed_tokens.weight)
    other = build_model(small_spec(d_model=48).copy(vocab_size=40))
    with pytest.raises((ValueError, RuntimeError)):
        load_checkpoint(path, other)
    wider = build_model(small_spec(layers=3).copy(vocab_size=40))
    with pytest.raises(ValueError, match="does not fit"):
        load_checkpoint(path, wider)
