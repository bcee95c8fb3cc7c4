"""Pruning: the smaller spec's estimate equals the pruned model's parameter count; pruning nothing gives the same
logits; GQA keeps whole key/value groups; a pruned run trains (heals from its teacher), generates, and exports and
loads in a fresh process; impossible options name the option and write nothing."""

import json
import math

import pytest
import torch

from conftest import SHAKESPEARE
from slm_blocks import ModelSpec, build_model, estimate, load_preset
from slm_blocks.grow.prune import Plan, PruneError, build_pruned, explicit_plan, importance, prune_run
from slm_blocks.grow.prepare import drive
from slm_blocks.training.events import StepEvent
from slm_blocks.training.job import Job
from slm_blocks.training.run import open_run

pytestmark = pytest.mark.usefixtures("one_thread")
T = 24
FREE = {"vocab_size": 40, "d_model": 32, "max_seq_len": 32, "blocks": [
    {"type": "embedding"}, {"type": "positional", "kind": "rope"},
    {"type": "attention", "attention": {"n_heads": 4, "n_kv_heads": 2}},
    {"type": "mlp", "mlp": {"activation": "silu", "gated": True, "hidden": 48}},
    {"type": "transformer", "repeat": 2, "attention": {"n_heads": 4, "qk_norm": True, "qkv_bias": True},
     "mlp": {"hidden": 40, "bias": True}},
    {"type": "norm"}, {"type": "final_norm"}, {"type": "lm_head"}]}


def specs():
    small = {name: load_preset(name).copy(vocab_size=50) for name in ("llama", "qwen3", "gemma3", "gpt2")}
    return {**small, "free-order": ModelSpec.from_dict(FREE)}


def _scores(model, spec):
    x = torch.randint(0, spec.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    return importance(model, [x])


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights once


@pytest.mark.parametrize("name", list(specs()))
def test_estimate_equals_the_pruned_models_parameter_count(name):
    spec = specs()[name]
    torch.manual_seed(0)
    model = build_model(spec).eval()
    scores = _scores(model, spec)
    heads = math.lcm(*[a.n_heads // a.kv_heads() for _, a, _ in spec.layer_plan() if a])  # whole groups
    layers = len(model.model.layers)
    drops = 1 if name != "gemma3" else 0  # Gemma 3's sliding/full pattern: width only
    for kw in (dict(drop_layers=drops), dict(mlp_keep=0.5), dict(heads_keep=heads), dict(drop_layers=drops,
                                                                                         mlp_keep=0.3,
                                                                                         heads_keep=heads)):
        plan = explicit_plan(spec, scores, kw.get("drop_layers", 0), kw.get("mlp_keep", 1.0), kw.get("heads_keep"))
        if plan.describe(spec) == "nothing pruned":  # e.g. MQA keeps its one group, Gemma 3 keeps its layers
            continue
        small, pruned, _ = build_pruned(model, spec, plan, scores, {})
        assert estimate(small).params == _count(pruned), (name, kw)
        assert estimate(small).params < estimate(spec).params
        assert len(pruned.model.layers) == layers - kw.get("drop_layers", 0)
        with torch.no_grad():  # and it runs
            pruned(torch.randint(0, spec.vocab_size, (1, 8)))


@pytest.mark.parametrize("name", list(specs()))
def test_pruning_nothing_gives_the_same_logits(name):
    spec = specs()[name]
    torch.manual_seed(1)
    model = build_model(spec).eval()
    scores = _scores(model, spec)
    full = {b: a.n_heads for b, a in ((i, getattr(blk, "attention", None)) for i, blk in enumerate(spec.blocks))
            if a is not None}
    hidden = {i: blk.mlp.hidden_size(spec.d_model) for i, blk in enumerate(spec.blocks) if hasattr(blk, "mlp")}
    for plan in (Plan(), Plan((), full, hidden)):
        small, pruned, _ = build_pruned(model, spec, plan, scores, {})
        x = torch.randint(0, spec.vocab_size, (2, min(96, spec.max_seq_len)),  # past Gemma 3's window
                          generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            assert torch.equal(pruned(x).logits, model(x).logits), name
        assert estimate(small).params == estimate(spec).params


def test_gqa_keeps_whole_key_value_groups_by_importance():
    spec = load_preset("llama").copy(vocab_size=50)  # 8 heads, 2 kv groups of 4
    torch.manual_seed(0)
    model = build_model(spec).eval()
    scores = _scores(model, spec)
    scores["heads"][0] = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.float64)  # layer 0: group 1 matters
    small, pruned, _ = build_pruned(model, spec, explicit_plan(spec, scores, 0, 1.0, 4), scores, {})
    a = small.blocks[2].attention
    assert (a.n_heads, a.n_kv_heads, a.head_dim) == (4, 1, spec.d_model // 8)
    old, new = model.model.layers[0].self_attn, pruned.model.layers[0].self_attn
    hd = a.head_dim
    assert torch.equal(new.k_proj.weight, old.k_proj.weight[hd:2 * hd])  # the second group's key head
    assert torch.equal(new.q_proj.weight, old.q_proj.weight[4 * hd:])  # with its four query heads
    assert torch.equal(new.o_proj.weight, old.o_proj.weight[:, 4 * hd:])
    with pytest.raises(PruneError) as e:
        prune_check(spec, heads_keep=3)
    assert "heads_keep" in str(e.value) and "multiple of 4" in str(e.value)


def prune_check(spec, **kw):
    from slm_blocks.grow.prune import check_options

    problems = check_options(spec, kw.get("drop_layers", 0), kw.get("mlp_keep", 1.0), kw.get("heads_keep"))
    if problems:
        raise PruneError(problems)


# ----------------------------------------------------------------------------- a pruned run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("prune") / "base"
    spec = load_preset("tiny-char").to_dict()  # GPT-2's shape, smaller: d 32, 3 layers, context 32
    spec.update(d_model=32, max_seq_len=32)
    spec["blocks"][2].update(repeat=3, mlp={**spec["blocks"][2]["mlp"], "hidden": 64})
    job = Job.from_dict({"spec": spec,
                         "data": {"source": "files", "paths": [str(SHAKESPEARE)], "max_chars": 40_000},
                         "train": dict(max_steps=6, batch_size=4, lr=3e-3, warmup_steps=1, log_every=1, eval_every=0,
                                       eval_batches=2, sample_tokens=0, checkpoint_every=0, device="cpu",
                                       precision="fp32", seed=2)})
    assert drive(job, out, emit=lambda e: None, track=False) == 0
    torch.set_num_threads(before)
    return out


def test_a_pruned_run_heals_generates_and_exports_to_a_fresh_process(trained, tmp_path):
    from slm_blocks.model.generation import SamplingConfig, generate_text
    from slm_blocks.sharing.export import export_run

    r = prune_run(trained, tmp_path / "small", drop_layers=1, mlp_keep=0.5, heal_steps=3, calib_batches=2)
    small = open_run(tmp_path / "small")
    assert estimate(small.spec).params == r.params_after == _count(small.load_model()) < r.params_before
    assert small.spec.blocks[2].repeat == 2 and small.spec.blocks[2].mlp.hidden == 32
    assert small.meta["teacher"]["source"] == "base" and small.meta["pruned_from"]["params_before"] == r.params_before
    # it generates right away (from the pruned weights), and exports: still GPT-2's shape, so a native class,
    # verified by reloading it in a fresh process
    text = generate_text(small.load_model(), small.tokenizer, "ROMEO:", SamplingConfig(max_new_tokens=8,
                                                                                       temperature=0))
    assert isinstance(text, str) and text
    exported = export_run(tmp_path / "small", tmp_path / "export")
    assert exported.verified and exported.native and exported.model_class == "GPT2LMHeadModel"
    assert json.loads((tmp_path / "export" / "slm_spec.json").read_text()) == small.spec.to_dict()
    # healing: a short distillation from the unpruned model, starting exactly at the pruned model
    events = []
    assert drive(None, tmp_path / "small", emit=events.append, resume=True, track=False) == 0
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert len(steps) == 3 and all(e.kd_loss is not None for e in steps)


def test_a_parameter_target_picks_the_best_of_several_shapes(trained, tmp_path):
    target = int(0.7 * estimate(open_run(trained, load_data=False).spec).params)
    r = prune_run(trained, tmp_path / "small", target_params=target, calib_batches=2)
    assert 0.9 * target <= r.params_after <= target and len(r.candidates) >= 4
    near = [c for c in r.candidates if c["params"] >= 0.9 * target]
    assert min(c["loss"] for c in near) == next(c["loss"] for c in r.candidates if c["shape"] == r.plan)
    small = open_run(tmp_path / "small", load_data=False)
    assert estimate(small.spec).params == r.params_after == _count(small.load_model())


@pytest.mark.parametrize("kw, field, words", [
    (dict(drop_layers=3), "drop_layers", "at least one"),
    (dict(heads_keep=0), "heads_keep", "at least one head"),
    (dict(heads_keep=5), "heads_keep", "only 4 heads"),
    (dict(mlp_keep=0.0), "mlp_keep", "(0, 1]"),
    (dict(target_params=10), "target_params", "aim higher"),
    (dict(target_params=10**9), "target_params", "below"),
    (dict(target_params=1000, drop_layers=1), "target_params", "not both"),
    (dict(), "target_params", "nothing to prune"),
])
def test_impossible_pruning_names_the_option_and_writes_nothing(trained, tmp_path, kw, field, words):
    with pytest.raises(PruneError) as e:
        prune_run(trained, tmp_path / "out", calib_batches=1, **kw)
    assert any(p.path == field and words in p.message for p in e.value.problems), e.value.problems
    assert not (tmp_path / "out").exists()


def test_pruning_into_an_existing_folder_is_refused(trained, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(PruneError, match="already exists"):
        prune_run(trained, tmp_path / "taken", drop_layers=1)


def test_prune_command_line(trained, tmp_path):
    """`python -m slm_blocks prune`: one process prunes, heals two steps and prints the before/after table (bad
    options: PruneError, a ValueError, which the CLI prints as `error: ...` with exit 2 like every other)."""
    import os
    import subprocess
    import sys

    def cli(*args):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-m", "slm_blocks", "prune", str(trained), *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=300)

    r = cli("--out", tmp_path / "cut", "--drop-layers", 1, "--heal", "--heal-steps", 2, "--no-mlflow")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "pruned: dropped layer" in r.stdout and "right after pruning" in r.stdout
    assert "pruned, before healing" in r.stdout and "cut after 2 steps" in r.stdout and "teacher: base" in r.stdout
