"""One focused test per spec validation rule.

Every test checks that the SpecError names the right block index and field, and that the message says
how to fix the spec. Specs are untrusted JSON: parsing must only ever raise SpecError.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from slm_blocks import BLOCK_TYPES, ModelSpec, Problem, SpecError, list_presets, load_preset  # noqa: E402
from slm_blocks.model.spec import MAX_SPEC_BYTES  # noqa: E402

# block indices of BASE
EMB, POS, LAYER, FINAL, HEAD = 0, 1, 2, 3, 4

BASE = {
    "vocab_size": 32,
    "d_model": 16,
    "max_seq_len": 16,
    "blocks": [
        {"type": "embedding"},
        {"type": "positional", "kind": "rope"},
        {"type": "transformer", "repeat": 2, "attention": {"n_heads": 4}, "mlp": {"hidden": 32}},
        {"type": "final_norm"},
        {"type": "lm_head"},
    ],
}


def base() -> dict:
    return copy.deepcopy(BASE)


def problems_of(data) -> list[Problem]:
    """The problems of an invalid spec (dict or JSON text); fails if it parses or raises anything else."""
    with pytest.raises(SpecError) as info:
        if isinstance(data, (str, bytes)):
            ModelSpec.from_json(data)
        else:
            ModelSpec.from_dict(data)
    problems = info.value.problems
    assert problems, "a SpecError must list at least one problem"
    assert all(isinstance(p, Problem) for p in problems)
    return problems


def only_problem(data, block, field) -> Problem:
    """The spec has exactly one problem, at (block, field); returns it."""
    problems = problems_of(data)
    assert [(p.block, p.field) for p in problems] == [(block, field)], problems
    return problems[0]


def find(problems, block, field) -> Problem:
    hits = [p for p in problems if (p.block, p.field) == (block, field)]
    assert len(hits) == 1, f"expected one problem at block={block} field={field!r}, got {problems}"
    return hits[0]


def set_path(d: dict, dotted: str, value) -> dict:
    *head, last = dotted.split(".")
    for key in head:
        d = d.setdefault(key, {})
    d[last] = value
    return d


# ----------------------------------------------------------------------------- sanity


def test_base_spec_is_valid():
    spec = ModelSpec.from_dict(base())
    assert spec.summary() == "embedding · rope · transformer×2 · final_norm · lm_head"


# ----------------------------------------------------------------------------- attention shapes


@pytest.mark.parametrize("index, blocks_before", [(LAYER, []), (LAYER + 1, [{"type": "mlp"}])])
def test_d_model_not_divisible_by_n_heads_suggests_divisors(index, blocks_before):
    data = base()
    data["d_model"] = 12
    data["blocks"][LAYER] = {"type": "attention", "attention": {"n_heads": 5}}
    data["blocks"][LAYER:LAYER] = blocks_before
    p = only_problem(data, index, "attention.n_heads")
    assert "d_model 12 is not divisible by n_heads 5" in p.message
    assert "use one of 1, 2, 3, 4, 6, 12" in p.message  # exactly the divisors of 12
    assert "head_dim" in p.message  # the other way out


def test_d_model_divisors_suggestion_only_lists_divisors():
    data = base()
    data["d_model"] = 60
    data["blocks"][LAYER]["attention"]["n_heads"] = 7
    p = only_problem(data, LAYER, "attention.n_heads")
    suggested = p.message.split("use one of ")[1].split(" or ")[0]
    numbers = [int(x) for x in suggested.split(", ")]
    assert numbers and all(60 % n == 0 for n in numbers)
    assert numbers == sorted(numbers)


def test_explicit_head_dim_allows_non_divisible_n_heads():
    data = base()
    data["d_model"] = 12
    data["blocks"][LAYER]["attention"] = {"n_heads": 5, "head_dim": 4}
    ModelSpec.from_dict(data)


def test_n_heads_not_divisible_by_n_kv_heads():
    data = base()
    data["blocks"][LAYER]["attention"] = {"n_heads": 4, "n_kv_heads": 3}
    p = only_problem(data, LAYER, "attention.n_kv_heads")
    assert "n_heads 4 is not divisible by n_kv_heads 3" in p.message
    assert "divisor of 4" in p.message and "MQA" in p.message


def test_more_kv_heads_than_query_heads_is_rejected():
    data = base()
    data["blocks"][LAYER]["attention"] = {"n_heads": 2, "n_kv_heads": 4}
    only_problem(data, LAYER, "attention.n_kv_heads")


@pytest.mark.parametrize("n_kv", [1, 2, 4, None])
def test_mha_gqa_mqa_are_valid(n_kv):
    data = base()
    data["blocks"][LAYER]["attention"] = {"n_heads": 4, "n_kv_heads": n_kv}
    ModelSpec.from_dict(data)


@pytest.mark.parametrize("attention", [{"n_heads": 4}, {"n_heads": 2, "head_dim": 5}])
def test_odd_head_dim_with_rope(attention):
    data = base()
    data["d_model"] = 12  # 12 / 4 = 3: odd
    data["blocks"][LAYER]["attention"] = attention
    p = only_problem(data, LAYER, "attention.head_dim")
    assert "is odd" in p.message and "RoPE" in p.message and "even head_dim" in p.message


def test_odd_head_dim_without_rope_is_fine():
    data = base()
    data["d_model"] = 12
    data["blocks"][POS]["kind"] = "learned"
    ModelSpec.from_dict(data)


def test_sinusoidal_needs_even_d_model():
    data = base()
    data["d_model"] = 15
    data["blocks"][POS]["kind"] = "sinusoidal"
    data["blocks"][LAYER]["attention"]["n_heads"] = 3
    p = only_problem(data, None, "d_model")
    assert "even d_model" in p.message


@pytest.mark.parametrize("block_type", ["transformer", "attention"])
def test_window_larger_than_max_seq_len(block_type):
    data = base()
    data["blocks"][LAYER] = {"type": block_type, "attention": {"n_heads": 4, "sliding_window": 17}}
    p = only_problem(data, LAYER, "attention.sliding_window")
    assert "window 17 is larger than max_seq_len 16" in p.message
    assert "use at most 16" in p.message


def test_window_equal_to_max_seq_len_is_fine():
    data = base()
    data["blocks"][LAYER]["attention"]["sliding_window"] = 16
    assert ModelSpec.from_dict(data).blocks[LAYER].attention.sliding_window == 16


# ----------------------------------------------------------------------------- block list structure


def test_missing_embedding():
    data = base()
    del data["blocks"][EMB]
    p = only_problem(data, None, "blocks")
    assert "no 'embedding' block" in p.message and "add one at the start" in p.message


def test_missing_lm_head():
    data = base()
    del data["blocks"][HEAD]
    p = only_problem(data, None, "blocks")
    assert "no 'lm_head' block" in p.message and "add one at the end" in p.message


def test_empty_block_list_reports_both_missing_blocks():
    data = base()
    data["blocks"] = []
    problems = problems_of(data)
    assert [(p.block, p.field) for p in problems] == [(None, "blocks"), (None, "blocks")]
    text = " ".join(p.message for p in problems)
    assert "'embedding'" in text and "'lm_head'" in text


@pytest.mark.parametrize("block, at, limit", [
    ({"type": "embedding"}, 1, "exactly one"),
    ({"type": "lm_head"}, 5, "exactly one"),
    ({"type": "positional", "kind": "rope"}, 2, "at most one"),
    ({"type": "final_norm"}, 4, "at most one"),
])
def test_duplicated_singleton_block(block, at, limit):
    data = base()
    data["blocks"].insert(at, block)
    p = only_problem(data, at, "type")
    assert f"a second '{block['type']}' block" in p.message
    assert "remove it" in p.message and limit in p.message


def test_three_embeddings_report_each_extra_one():
    data = base()
    data["blocks"][1:1] = [{"type": "embedding"}, {"type": "embedding"}]
    problems = problems_of(data)
    assert [(p.block, p.field) for p in problems] == [(1, "type"), (2, "type")]


def test_embedding_not_first():
    data = base()
    b = data["blocks"]
    b[EMB], b[POS] = b[POS], b[EMB]
    p = only_problem(data, 1, "type")
    assert "embedding block must come first" in p.message and "move it to the top" in p.message


def test_lm_head_not_last():
    data = base()
    b = data["blocks"]
    b[FINAL], b[HEAD] = b[HEAD], b[FINAL]
    p = only_problem(data, 3, "type")
    assert "lm_head block must come last" in p.message and "move it to the bottom" in p.message


def test_positional_after_a_layer():
    data = base()
    b = data["blocks"]
    b[POS], b[LAYER] = b[LAYER], b[POS]  # embedding, transformer, positional, ...
    p = only_problem(data, 2, "type")
    assert "positional block must come before the first layer" in p.message
    assert "right after the embedding" in p.message


@pytest.mark.parametrize("layer", [{"type": "transformer"}, {"type": "attention"}, {"type": "mlp"}, {"type": "norm"}])
def test_final_norm_before_a_layer(layer):
    data = base()
    data["blocks"].insert(HEAD, layer)  # embedding, rope, transformer, final_norm, <layer>, lm_head
    p = only_problem(data, FINAL, "type")
    assert "final_norm must come after the last layer" in p.message and "above lm_head" in p.message


def test_free_layer_order_and_no_positional_are_valid():
    data = base()
    data["blocks"] = [
        {"type": "embedding", "scale": True},
        {"type": "mlp", "norm": None},
        {"type": "norm"},
        {"type": "attention", "norm": None, "attention": {"n_heads": 2}},
        {"type": "transformer"},
        {"type": "lm_head"},
    ]
    spec = ModelSpec.from_dict(data)
    assert spec.positional() == "none"
    assert spec.summary() == "embedding · mlp · norm · attention · transformer · lm_head"


# ----------------------------------------------------------------------------- sizes and ranges


@pytest.mark.parametrize("block, path, value, lo", [
    (None, "vocab_size", 0, 2),
    (None, "vocab_size", 1, 2),
    (None, "vocab_size", -5, 2),
    (None, "d_model", 0, 1),
    (None, "d_model", -16, 1),
    (None, "max_seq_len", 0, 1),
    (LAYER, "repeat", 0, 1),
    (LAYER, "repeat", -1, 1),
    (LAYER, "attention.n_heads", 0, 1),
    (LAYER, "attention.n_heads", -4, 1),
    (LAYER, "attention.n_kv_heads", 0, 1),
    (LAYER, "attention.head_dim", 0, 1),
    (LAYER, "attention.sliding_window", 0, 1),
    (LAYER, "mlp.hidden", 0, 1),
    (LAYER, "mlp.hidden", -32, 1),
    (LAYER, "full_attention_every", 0, 1),
    (LAYER, "norm.eps", 0, 1e-12),
    (POS, "rope_theta", 0, 1.0),
])
def test_sizes_must_be_positive(block, path, value, lo):
    data = base()
    set_path(data if block is None else data["blocks"][block], path, value)
    p = only_problem(data, block, path)
    assert f"is {value}" in p.message or f"is {float(value)}" in p.message
    assert f"must be at least {lo}" in p.message


@pytest.mark.parametrize("block, path, value, hi", [
    (None, "version", 2, 1),
    (None, "d_model", 16385, 16384),
    (LAYER, "repeat", 257, 256),
    (None, "init_std", 1.5, 1.0),
])
def test_values_above_their_maximum(block, path, value, hi):
    data = base()
    set_path(data if block is None else data["blocks"][block], path, value)
    p = only_problem(data, block, path)
    assert f"must be at most {hi}" in p.message


@pytest.mark.parametrize("value", [1.0, 1.5, 100])
def test_global_dropout_must_be_below_one(value):
    data = base()
    data["dropout"] = value
    p = only_problem(data, None, "dropout")
    assert "[0, 1)" in p.message


def test_global_dropout_must_not_be_negative():
    data = base()
    data["dropout"] = -0.1
    p = only_problem(data, None, "dropout")
    assert "at least 0" in p.message


@pytest.mark.parametrize("value", [1.0, 2.5])
def test_attention_dropout_must_be_below_one(value):
    data = base()
    data["blocks"][LAYER]["attention"]["dropout"] = value
    p = only_problem(data, LAYER, "attention.dropout")
    assert "[0, 1)" in p.message


def test_attention_dropout_must_not_be_negative():
    data = base()
    data["blocks"][LAYER]["attention"]["dropout"] = -0.5
    p = only_problem(data, LAYER, "attention.dropout")
    assert "at least 0" in p.message


def test_dropout_just_below_one_is_fine():
    data = base()
    data["dropout"] = 0.999
    data["blocks"][LAYER]["attention"]["dropout"] = 0.999
    ModelSpec.from_dict(data)


# ----------------------------------------------------------------------------- types and names


@pytest.mark.parametrize("btype", ["convolution", "Transformer", "", "lm-head", None, 3, ["embedding"], {"a": 1}])
def test_unknown_block_type_lists_allowed_types(btype):
    data = base()
    data["blocks"][LAYER] = {"type": btype}
    p = only_problem(data, LAYER, "type")
    assert "is not a block type" in p.message
    for name in BLOCK_TYPES:
        assert name in p.message


def test_block_without_type():
    data = base()
    data["blocks"][LAYER] = {"repeat": 2}
    p = only_problem(data, LAYER, "type")
    assert "is not a block type" in p.message


@pytest.mark.parametrize("path", [
    "os.system", "torch.nn.Linear", "builtins.eval", "slm_blocks.model.spec.ModelSpec", "__import__",
    "smtplib.SMTP", "xml.dom.minidom.parseString", "antigravity", "http.server", "subprocess.Popen",
])
def test_dotted_import_path_is_an_unknown_type_and_imports_nothing(path):
    data = base()
    data["blocks"][LAYER] = {"type": path, "attention": {"n_heads": 4}}
    data["blocks"].append({"type": path})  # also as the last block
    root = path.split(".")[0]
    before = set(sys.modules)
    problems = problems_of(data)
    problems_of(json.dumps(data))
    after = set(sys.modules)
    assert after == before, f"parsing imported {sorted(after - before)}"
    if root not in before:
        assert root not in sys.modules
    last = len(data["blocks"]) - 1
    assert [(p.block, p.field) for p in problems] == [(LAYER, "type"), (last, "type")]
    assert all("is not a block type" in p.message for p in problems)


@pytest.mark.parametrize("block, key, path", [
    (None, "vocab", "vocab"),
    (None, "n_layers", "n_layers"),
    (LAYER, "heads", "heads"),
    (LAYER, "attention.heads", "attention.heads"),
    (LAYER, "mlp.width", "mlp.width"),
    (LAYER, "norm.type", "norm.type"),
    (EMB, "dim", "dim"),
    (FINAL, "norm.elementwise", "norm.elementwise"),
    (HEAD, "bias", "bias"),
])
def test_unknown_field_names(block, key, path):
    data = base()
    set_path(data if block is None else data["blocks"][block], key, 1)
    p = only_problem(data, block, path)
    assert "is not a field of" in p.message and "remove it" in p.message and "allowed:" in p.message


def test_unknown_field_message_lists_the_real_fields():
    data = base()
    data["blocks"][LAYER]["attention"]["heads"] = 4
    p = only_problem(data, LAYER, "attention.heads")
    for name in ("n_heads", "n_kv_heads", "head_dim", "sliding_window", "qk_norm"):
        assert name in p.message


@pytest.mark.parametrize("block, path, value, expected", [
    (None, "vocab_size", "32", "must be a whole number"),
    (None, "d_model", True, "must be a whole number"),
    (None, "d_model", False, "must be a whole number"),
    (None, "max_seq_len", 16.5, "must be a whole number"),
    (None, "max_seq_len", [16], "must be a whole number"),
    (None, "max_seq_len", None, "must be a whole number"),
    (LAYER, "repeat", "2", "must be a whole number"),
    (LAYER, "attention.n_heads", True, "must be a whole number"),
    (LAYER, "mlp.hidden", {"size": 4}, "must be a whole number"),
    (None, "tie_embeddings", 1, "must be true or false"),
    (None, "tie_embeddings", "true", "must be true or false"),
    (EMB, "scale", "yes", "must be true or false"),
    (LAYER, "attention.qk_norm", None, "must be true or false"),
    (None, "init_std", "0.02", "must be a number"),
    (None, "dropout", True, "must be a number"),
    (POS, "rope_theta", [10000.0], "must be a number"),
    (LAYER, "attention", [], "must be a JSON object, got a list"),
    (LAYER, "mlp", "silu", "must be a JSON object, got a string"),
    (LAYER, "norm", 5, "must be a JSON object, got a number"),
    (LAYER, "attention", None, "must be a JSON object, got nothing (empty)"),
    (POS, "kind", "RoPE", "is not allowed; use one of: learned, sinusoidal, rope, alibi, none"),
    (POS, "kind", None, "is empty; use one of: learned"),
    (LAYER, "mlp.activation", "swish", "is not allowed; use one of: gelu, gelu_tanh, relu, silu"),
    (LAYER, "norm_placement", 1, "is not allowed; use one of"),
    (LAYER, "residual", ["parallel"], "is not allowed; use one of"),
    (None, "name", 5, "must be a short text"),
    (None, "description", "x" * 2001, "must be a short text"),
])
def test_wrong_json_types(block, path, value, expected):
    data = base()
    set_path(data if block is None else data["blocks"][block], path, value)
    p = only_problem(data, block, path)
    assert expected in p.message
    # the same through JSON text
    assert [(q.block, q.field) for q in problems_of(json.dumps(data))] == [(block, path)]


def test_blocks_must_be_a_list():
    data = base()
    data["blocks"] = {"0": {"type": "embedding"}}
    p = only_problem(data, None, "blocks")
    assert "must be a list of blocks, got an object" in p.message


@pytest.mark.parametrize("raw, kind", [(5, "a number"), ("embedding", "a string"), ([], "a list"), (None, "nothing (empty)")])
def test_block_must_be_an_object(raw, kind):
    data = base()
    data["blocks"][LAYER] = raw
    p = only_problem(data, LAYER, "")
    assert f"must be a JSON object with a 'type', got {kind}" in p.message
    assert str(p) == f"block {LAYER}: {p.message}"


def test_whole_floats_are_accepted_for_ints():
    data = base()
    data["d_model"] = 16.0
    spec = ModelSpec.from_dict(data)
    assert spec.d_model == 16 and type(spec.d_model) is int


@pytest.mark.parametrize("block, path", [
    (None, "dropout"), (None, "init_std"), (POS, "rope_theta"), (LAYER, "norm.eps"), (LAYER, "attention.dropout"),
    (None, "vocab_size"), (LAYER, "attention.n_heads"),
])
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers(block, path, token):
    data = base()
    set_path(data if block is None else data["blocks"][block], path, "__X__")
    text = json.dumps(data).replace('"__X__"', token)
    problems = problems_of(text)
    assert [(p.block, p.field) for p in problems] == [(block, path)]
    msg = problems[0].message
    assert "must be a finite number" in msg or "must be a whole number" in msg
    # and the same from Python floats
    set_path(data if block is None else data["blocks"][block], path, float(token.replace("Infinity", "inf")))
    only_problem(data, block, path)


@pytest.mark.parametrize("block, path", [
    (None, "dropout"), (None, "init_std"), (POS, "rope_theta"), (LAYER, "norm.eps"), (LAYER, "attention.dropout"),
])
def test_huge_integer_in_a_float_field_is_a_spec_error(block, path):
    """A JSON integer too large for a float (e.g. 1 followed by 400 zeros) must be reported, not crash."""
    data = base()
    set_path(data if block is None else data["blocks"][block], path, "__X__")
    text = json.dumps(data).replace('"__X__"', "1" + "0" * 400)
    problems = problems_of(text)
    assert [(p.block, p.field) for p in problems] == [(block, path)]


@pytest.mark.parametrize("block, path", [(None, "vocab_size"), (LAYER, "repeat")])
def test_huge_integer_in_an_int_field_is_a_spec_error(block, path):
    data = base()
    set_path(data if block is None else data["blocks"][block], path, "__X__")
    text = json.dumps(data).replace('"__X__"', "1" + "0" * 400)
    p = only_problem(text, block, path)
    assert "must be at most" in p.message


# ----------------------------------------------------------------------------- combinations


@pytest.mark.parametrize("block", [LAYER, FINAL])
def test_rmsnorm_with_bias(block):
    data = base()
    data["blocks"][block]["norm"] = {"kind": "rmsnorm", "bias": True}
    p = only_problem(data, block, "norm.bias")
    assert "RMSNorm has no bias" in p.message and "set bias to false or kind to 'layernorm'" in p.message


@pytest.mark.parametrize("block_type", ["attention", "mlp", "norm"])
def test_rmsnorm_with_bias_in_standalone_blocks(block_type):
    data = base()
    data["blocks"][LAYER] = {"type": block_type, "norm": {"kind": "rmsnorm", "bias": True}}
    only_problem(data, LAYER, "norm.bias")


def test_layernorm_with_bias_is_fine():
    data = base()
    data["blocks"][LAYER]["norm"] = {"kind": "layernorm", "bias": True}
    ModelSpec.from_dict(data)


def test_classic_post_with_parallel_residual():
    data = base()
    data["blocks"][LAYER].update(norm_placement="classic_post", residual="parallel")
    p = only_problem(data, LAYER, "residual")
    assert "classic_post" in p.message and "use 'sequential'" in p.message


@pytest.mark.parametrize("placement", ["pre", "post", "sandwich"])
def test_parallel_with_other_placements_is_fine(placement):
    data = base()
    data["blocks"][LAYER].update(norm_placement=placement, residual="parallel")
    ModelSpec.from_dict(data)


def test_full_attention_every_without_a_window():
    data = base()
    data["blocks"][LAYER]["full_attention_every"] = 2
    p = only_problem(data, LAYER, "full_attention_every")
    assert "sliding_window" in p.message and "leave it empty" in p.message


def test_full_attention_every_with_a_window_is_fine():
    data = base()
    data["blocks"][LAYER]["full_attention_every"] = 2
    data["blocks"][LAYER]["attention"]["sliding_window"] = 4
    spec = ModelSpec.from_dict(data)
    assert [w for _, _, w in spec.layer_plan()] == [4, None]


@pytest.mark.parametrize("kind", ["learned", "sinusoidal", "alibi", "none"])
def test_local_rope_theta_without_rope(kind):
    data = base()
    data["blocks"][POS] = {"type": "positional", "kind": kind, "local_rope_theta": 10000.0}
    p = only_problem(data, POS, "local_rope_theta")
    assert "only used with kind 'rope'" in p.message and "leave it empty" in p.message


# ----------------------------------------------------------------------------- raw text


@pytest.mark.parametrize("text", ["", "{", "{not json}", "[1, 2", "{'vocab_size': 32}", "vocab_size: 32",
                                  '{"a": 1,}', "\x00"])
def test_non_json_text(text):
    problems = problems_of(text)
    assert [(p.block, p.field) for p in problems] == [(None, "")]
    assert "is not valid JSON" in problems[0].message and "fix the JSON syntax" in problems[0].message


def test_non_utf8_bytes():
    p = only_problem(b'{"name": "\xff\xfe"}', None, "")
    assert "UTF-8" in p.message


def test_utf8_bytes_are_accepted():
    assert ModelSpec.from_json(json.dumps(base()).encode("utf-8")) == ModelSpec.from_dict(base())


@pytest.mark.parametrize("text, kind", [("[]", "a list"), ("42", "a number"), ("null", "nothing (empty)"), ('"spec"', "a string"),
                                        ("true", "a boolean")])
def test_top_level_must_be_an_object(text, kind):
    p = only_problem(text, None, "")
    assert f"must be a JSON object, got {kind}" in p.message


def test_json_over_64_kb():
    text = json.dumps(base())
    text = text[:-1] + " " * (MAX_SPEC_BYTES + 1 - len(text)) + "}"
    assert len(text.encode()) == MAX_SPEC_BYTES + 1
    p = only_problem(text, None, "")
    assert "larger than 64 KB" in p.message
    only_problem(text.encode(), None, "")


def test_json_exactly_64_kb_is_parsed():
    text = json.dumps(base())
    text = text[:-1] + " " * (MAX_SPEC_BYTES - len(text)) + "}"
    assert len(text.encode()) == MAX_SPEC_BYTES
    ModelSpec.from_json(text)


def test_size_limit_counts_bytes_not_characters():
    data = base()
    data["junk"] = "é" * 40000  # 40k characters, 80k bytes
    text = json.dumps(data, ensure_ascii=False)
    assert len(text) < MAX_SPEC_BYTES < len(text.encode())
    p = only_problem(text, None, "")
    assert "larger than 64 KB" in p.message


def test_huge_json_is_rejected_before_parsing():
    p = only_problem("[" * 10_000_000, None, "")
    assert "larger than 64 KB" in p.message


@pytest.mark.parametrize("opener, closer", [("[", "]"), ('{"a":', "}")])
def test_deeply_nested_json(opener, closer):
    n = 100_000  # too big (size limit) and too deep (recursion limit): either way a SpecError
    text = opener * n + closer * n
    problems = problems_of(text)
    assert [p.field for p in problems] == [""]


@pytest.mark.parametrize("opener, closer", [("[", "]"), ('{"a":', "}")])
def test_nested_json_under_the_size_limit_but_past_the_recursion_limit(opener, closer):
    n = 10_000  # at most 60 KB
    text = opener * n + closer * n
    assert len(text) < MAX_SPEC_BYTES
    p = only_problem(text, None, "")
    assert "nested too deeply" in p.message


@pytest.mark.parametrize("where", ["vocab_size", "dropout", "name", "scale", "kind", "n_heads", "unknown", "block"])
def test_nested_json_in_a_field_at_every_depth_is_a_spec_error(where):
    """Depths just under json's own recursion limit parse fine; the error path must not recurse past it."""
    templates = {
        "vocab_size": '{"vocab_size": %s}',
        "dropout": '{"dropout": %s}',
        "name": '{"name": %s}',
        "scale": '{"blocks": [{"type": "embedding", "scale": %s}]}',
        "kind": '{"blocks": [{"type": "positional", "kind": %s}]}',
        "n_heads": '{"blocks": [{"type": "transformer", "attention": {"n_heads": %s}}]}',
        "unknown": '{"zzz": %s}',
        "block": '{"blocks": [%s]}',
    }
    failures = []
    for depth in range(sys.getrecursionlimit() - 200, sys.getrecursionlimit() + 20):
        text = templates[where] % ("[" * depth + "]" * depth)
        try:
            ModelSpec.from_json(text)
        except SpecError:
            pass
        except RecursionError:
            failures.append(depth)
    assert not failures, f"RecursionError instead of SpecError at nesting depths {failures}"


# ----------------------------------------------------------------------------- all problems at once


def test_several_validation_problems_are_all_reported():
    data = base()
    data["dropout"] = 1.0
    del data["blocks"][HEAD]  # no lm_head
    data["blocks"][LAYER].update(norm_placement="classic_post", residual="parallel", full_attention_every=3)
    data["blocks"][LAYER]["norm"] = {"kind": "rmsnorm", "bias": True}
    data["blocks"].insert(LAYER + 1, {"type": "attention", "attention": {"n_heads": 4, "n_kv_heads": 3,
                                                                          "sliding_window": 99, "dropout": 1.0}})
    data["blocks"][POS]["kind"] = "alibi"
    data["blocks"][POS]["local_rope_theta"] = 100.0
    problems = problems_of(data)
    got = {(p.block, p.field) for p in problems}
    assert got == {
        (None, "dropout"), (None, "blocks"),
        (POS, "local_rope_theta"),
        (LAYER, "residual"), (LAYER, "full_attention_every"), (LAYER, "norm.bias"),
        (LAYER + 1, "attention.n_kv_heads"), (LAYER + 1, "attention.sliding_window"), (LAYER + 1, "attention.dropout"),
    }
    assert len(problems) == len(got)


def test_several_parse_problems_are_all_reported():
    data = base()
    data["vocab_size"] = "many"
    data["colour"] = "blue"
    data["tie_embeddings"] = 0
    data["blocks"][POS]["kind"] = "rotary"
    data["blocks"][LAYER]["attention"] = []
    data["blocks"][LAYER]["mlp"]["hidden"] = -1
    data["blocks"][FINAL] = {"type": "torch.nn.LayerNorm"}
    data["blocks"].append(7)
    problems = problems_of(json.dumps(data))
    assert {(p.block, p.field) for p in problems} == {
        (None, "vocab_size"), (None, "colour"), (None, "tie_embeddings"),
        (POS, "kind"), (LAYER, "attention"), (LAYER, "mlp.hidden"), (FINAL, "type"), (HEAD + 1, ""),
    }
    err_text = str(SpecError(problems))
    for p in problems:
        assert str(p) in err_text


def test_independent_problems_in_one_attention_block_are_all_reported():
    """A bad n_heads must not hide the block's other, unrelated problems (window, dropout)."""
    data = base()
    data["blocks"][LAYER]["attention"] = {"n_heads": 5, "sliding_window": 99, "dropout": 1.0}
    problems = problems_of(data)
    assert {(p.block, p.field) for p in problems} == {
        (LAYER, "attention.n_heads"), (LAYER, "attention.sliding_window"), (LAYER, "attention.dropout"),
    }


def test_problem_str_names_the_block():
    data = base()
    data["blocks"][LAYER]["attention"]["n_kv_heads"] = 3
    data["dropout"] = 2.0
    problems = problems_of(data)
    block_p = find(problems, LAYER, "attention.n_kv_heads")
    global_p = find(problems, None, "dropout")
    assert str(block_p).startswith(f"block {LAYER} · attention.n_kv_heads: ")
    assert block_p.message in str(block_p)
    assert str(global_p).startswith("dropout: ")
    assert "block" not in str(global_p).split(":")[0]
    assert str(Problem("blocks[7]", "x")) == "block 7: x"
    err = SpecError(problems)
    assert f"- block {LAYER} · attention.n_kv_heads: " in str(err) and isinstance(err, ValueError)
    assert "- spec · dropout: " in str(err)  # a global field, as the CLI prints it


# ----------------------------------------------------------------------------- presets round trip


def test_there_are_presets():
    assert {"tiny-char", "gpt2", "llama", "mistral", "qwen3", "gemma3"} <= set(list_presets())


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_preset_round_trip(name):
    spec = load_preset(name)
    assert spec.name == name
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert ModelSpec.from_json(spec.to_json(indent=None)) == spec
    assert ModelSpec.from_dict(json.loads(spec.to_json())) == spec
    # a changed spec is not equal, so the comparison above is meaningful
    assert ModelSpec.from_json(spec.copy(d_model=spec.d_model * 2).to_json()) != spec
    assert math.isfinite(spec.init_std)


def test_round_trip_keeps_every_block_field():
    data = base()
    data["blocks"][LAYER] = {
        "type": "transformer", "repeat": 3, "norm_placement": "sandwich", "residual": "parallel",
        "full_attention_every": 3,
        "attention": {"n_heads": 4, "n_kv_heads": 2, "head_dim": 6, "qkv_bias": True, "out_bias": True,
                      "qk_norm": True, "sliding_window": 8, "dropout": 0.1},
        "mlp": {"activation": "gelu_tanh", "gated": True, "hidden": 24, "bias": True},
        "norm": {"kind": "layernorm", "eps": 1e-6, "bias": True},
    }
    data["blocks"][POS] = {"type": "positional", "kind": "rope", "rope_theta": 5e5, "local_rope_theta": 1e4}
    spec = ModelSpec.from_dict(data)
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec
    out = json.loads(spec.to_json())["blocks"][LAYER]
    for key, value in data["blocks"][LAYER].items():
        if isinstance(value, dict):
            for k, v in value.items():
                assert out[key][k] == v
        else:
            assert out[key] == value


def test_an_emptied_field_is_named_empty_never_null():
    """What the Build tab shows when a learner clears a required field: "is empty" and what to enter."""
    from slm_blocks.ui.build_tab import field_widgets, set_path as set_field

    for btype in BLOCK_TYPES:
        for path, hint, _ in field_widgets(btype):
            data = base()
            block = next((i for i, b in enumerate(data["blocks"]) if b["type"] == btype), None)
            if block is None:
                data["blocks"].insert(HEAD - 1 if btype not in ("final_norm", "lm_head") else HEAD, {"type": btype})
                block = next(i for i, b in enumerate(data["blocks"]) if b["type"] == btype)
            set_field(data["blocks"][block], path, None)
            try:
                ModelSpec.from_dict(data)
                continue  # an optional field: empty means the default
            except SpecError as e:
                mine = [p for p in e.problems if p.field == path]
            assert mine and all("null" not in p.message and "is empty" in p.message for p in mine), (btype, path, mine)
