"""The block editor's edits as pure functions of the spec state (no browser): each returns a new state and
never changes the one it was given."""

import copy
import json

from slm_blocks import ModelSpec
from slm_blocks.ui.build_tab import (
    _adder, _apply_json, _duplicator, _global_setter, _mover, _remover, _setter, check, clean, preset_state,
    summary,
)


def _types(spec):
    return [b["type"] for b in spec["blocks"]]


def _id(spec, block_type):
    return next(b["_id"] for b in spec["blocks"] if b["type"] == block_type)


def test_edits_return_new_states_and_keep_ids():
    spec = preset_state("llama")
    before = copy.deepcopy(spec)
    tid = _id(spec, "transformer")
    moved = _mover(tid, -1)(spec)
    assert _types(moved)[1:3] == ["transformer", "positional"] and spec == before
    assert _types(_mover(tid, -1)(_mover(tid, -1)(moved)))[0] == "transformer"  # stops at the top
    dup = _duplicator(tid)(spec)
    assert _types(dup).count("transformer") == 2 and len({b["_id"] for b in dup["blocks"]}) == len(dup["blocks"])
    assert _types(_remover(tid)(spec)).count("transformer") == 0 and spec == before
    assert _remover("no-such-id")(spec) == spec


def test_added_layers_go_after_the_last_layer_and_other_blocks_above_the_head():
    spec = preset_state("tiny-char")
    assert _types(_adder("mlp", spec))[-3:] == ["mlp", "final_norm", "lm_head"]
    assert _types(_adder("norm", spec))[-3:] == ["norm", "final_norm", "lm_head"]
    assert _types(_adder("positional", spec))[-2:] == ["positional", "lm_head"]
    assert check(_adder("mlp", spec))[1] == []


def test_field_setters_parse_like_the_widgets_send():
    spec = preset_state("tiny-char")
    tid = _id(spec, "transformer")
    spec = _setter(tid, "repeat", int)(6.0, spec)  # a Number sends floats
    spec = _setter(tid, "attention.n_kv_heads", int | None)("2", spec)  # optional numbers are text boxes
    spec = _setter(tid, "mlp.hidden", int | None)("", spec)  # empty = the default
    spec = _setter(tid, "norm.eps", float)(1.0, spec)  # a float field keeps a whole value a float
    assert type(next(b for b in spec["blocks"] if b["type"] == "transformer")["norm"]["eps"]) is float
    spec = _setter(tid, "norm.eps", float)(1e-6, spec)
    block = next(b for b in spec["blocks"] if b["type"] == "transformer")
    assert block["repeat"] == 6 and isinstance(block["repeat"], int)
    assert block["attention"]["n_kv_heads"] == 2 and block["mlp"]["hidden"] is None and block["norm"]["eps"] == 1e-6
    parsed, problems = check(spec)
    assert problems == [] and parsed.blocks[2].repeat == 6
    bad = _setter(tid, "attention.n_kv_heads", int | None)("three", spec)
    _, problems = check(bad)
    assert any(p.field == "attention.n_kv_heads" for p in problems)  # typed text reaches validation, named
    assert _global_setter("d_model")(96.0, spec)["d_model"] == 96


def test_json_round_trip_and_refusals():
    spec = preset_state("gpt2")
    text = json.dumps(clean(spec))
    applied, msg = _apply_json(text, preset_state("tiny-char"))
    assert ModelSpec.from_dict(clean(applied)).to_dict() == ModelSpec.from_dict(clean(spec)).to_dict()
    for bad in ("{", "[1, 2]", '{"blocks": 3}', "x" * 70_000, "[" * 5000 + "]" * 5000):
        kept, msg = _apply_json(bad, spec)
        assert kept is spec and msg.startswith("⚠️")


def test_summary_names_problems_or_gives_the_estimate():
    problems, estimate = summary(preset_state("tiny-char"))
    assert problems.startswith("✅") and "parameters" in estimate
    spec = preset_state("tiny-char")
    spec["d_model"] = 130
    problems, _ = summary(spec)
    assert "n_heads" in problems
