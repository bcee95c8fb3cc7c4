"""Property tests: random valid specs build and run; random junk specs only ever raise SpecError."""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from slm_blocks import ModelSpec, SpecError, build_model, estimate  # noqa: E402

torch.set_num_threads(1)

POSITIONAL_KINDS = ["learned", "sinusoidal", "rope", "alibi", "none"]
ACTIVATIONS = ["gelu", "gelu_tanh", "relu", "silu"]
PLACEMENTS = ["pre", "post", "sandwich", "classic_post"]
MAX_BUILD_PARAMS = 2_000_000  # a mutated but valid spec bigger than this is only estimated, not built

# Derandomized so CI is reproducible (a coverage test once missed GQA by chance); set SLM_HYPOTHESIS_RANDOM=1
# to explore new examples locally.
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                derandomize=not os.environ.get("SLM_HYPOTHESIS_RANDOM"))


# ----------------------------------------------------------------------------- valid specs


@st.composite
def norm_specs(draw):
    kind = draw(st.sampled_from(["layernorm", "rmsnorm"]))
    norm = {"kind": kind}
    if draw(st.booleans()):
        norm["eps"] = draw(st.sampled_from([1e-12, 1e-6, 1e-5, 1e-3, 0.1]))
    if kind == "layernorm":
        norm["bias"] = draw(st.booleans())
    elif draw(st.booleans()):
        norm["bias"] = False
    return norm


@st.composite
def attention_specs(draw, d_model: int, rope: bool, max_seq_len: int):
    """An attention spec valid for this d_model: MHA/GQA/MQA, implicit or explicit head_dim."""
    even = lambda hd: hd % 2 == 0 or not rope  # noqa: E731
    implicit = [h for h in range(1, min(d_model, 8) + 1) if d_model % h == 0 and even(d_model // h)]
    attn: dict = {}
    if implicit and draw(st.booleans()):
        n_heads = draw(st.sampled_from(implicit))
        if draw(st.booleans()):  # spelling out the implicit head_dim is fine too
            attn["head_dim"] = d_model // n_heads
    else:
        n_heads = draw(st.integers(1, 4))
        attn["head_dim"] = draw(st.sampled_from([2, 4, 6, 8]) if rope else st.integers(1, 8))
    attn["n_heads"] = n_heads
    kv = draw(st.sampled_from([None, 1, n_heads] + [k for k in range(2, n_heads) if n_heads % k == 0]))
    if kv is not None or draw(st.booleans()):
        attn["n_kv_heads"] = kv
    for flag in ("qkv_bias", "out_bias", "qk_norm"):
        if draw(st.booleans()):
            attn[flag] = draw(st.booleans())
    if draw(st.booleans()):
        attn["sliding_window"] = draw(st.integers(1, max_seq_len))
    if draw(st.booleans()):
        attn["dropout"] = draw(st.sampled_from([0.0, 0.1, 0.5, 0.99]))
    return attn


@st.composite
def mlp_specs(draw):
    mlp = {"activation": draw(st.sampled_from(ACTIVATIONS)), "gated": draw(st.booleans())}
    if draw(st.booleans()):
        mlp["hidden"] = draw(st.integers(1, 48))
    if draw(st.booleans()):
        mlp["bias"] = draw(st.booleans())
    return mlp


@st.composite
def layer_blocks(draw, d_model: int, rope: bool, max_seq_len: int):
    kind = draw(st.sampled_from(["transformer", "transformer", "attention", "mlp", "norm"]))
    if kind == "transformer":
        attn = draw(attention_specs(d_model, rope, max_seq_len))
        placement = draw(st.sampled_from(PLACEMENTS))
        residual = "sequential" if placement == "classic_post" else draw(st.sampled_from(["sequential", "parallel"]))
        block = {"type": "transformer", "repeat": draw(st.integers(1, 2)), "attention": attn,
                 "mlp": draw(mlp_specs()), "norm": draw(norm_specs()), "norm_placement": placement,
                 "residual": residual}
        if attn.get("sliding_window") is not None and draw(st.booleans()):
            block["full_attention_every"] = draw(st.integers(1, 3))
        return block
    if kind == "attention":
        return {"type": "attention", "attention": draw(attention_specs(d_model, rope, max_seq_len)),
                "norm": draw(st.none() | norm_specs())}
    if kind == "mlp":
        return {"type": "mlp", "mlp": draw(mlp_specs()), "norm": draw(st.none() | norm_specs())}
    return {"type": "norm", "norm": draw(norm_specs())}


@st.composite
def valid_spec_dicts(draw):
    pos_kind = draw(st.sampled_from(POSITIONAL_KINDS + [None]))  # None: no positional block at all
    d_model = draw(st.integers(1, 32))
    if pos_kind == "sinusoidal" and d_model % 2:
        d_model += 1 if d_model < 32 else -1
    max_seq_len = draw(st.integers(1, 16))
    rope = pos_kind == "rope"
    data = {"vocab_size": draw(st.integers(2, 50)), "d_model": d_model, "max_seq_len": max_seq_len,
            "tie_embeddings": draw(st.booleans())}
    if draw(st.booleans()):
        data["init_std"] = draw(st.sampled_from([0.0, 0.02, 0.1]))
    if draw(st.booleans()):
        data["dropout"] = draw(st.sampled_from([0.0, 0.1, 0.9]))
    if draw(st.booleans()):
        data.update(name=draw(st.text(max_size=10)), description="random", follows="nothing", version=1)

    blocks = [{"type": "embedding", "scale": draw(st.booleans())}]
    if pos_kind is not None:
        pos = {"type": "positional", "kind": pos_kind}
        if draw(st.booleans()):
            pos["rope_theta"] = draw(st.sampled_from([1.0, 100.0, 10000.0, 1e6]))
        if rope and draw(st.booleans()):
            pos["local_rope_theta"] = draw(st.sampled_from([10.0, 10000.0]))
        blocks.append(pos)
    n_layers = draw(st.integers(0, 3))
    blocks += [draw(layer_blocks(d_model, rope, max_seq_len)) for _ in range(n_layers)]
    if draw(st.booleans()):
        blocks.append({"type": "final_norm", "norm": draw(norm_specs())})
    blocks.append({"type": "lm_head"})
    data["blocks"] = blocks
    return data


def check_builds_and_runs(spec: ModelSpec, seq_len: int, seed: int = 0):
    model = build_model(spec)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert estimate(spec).params == n_params, (estimate(spec).params, n_params)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, spec.vocab_size, (2, seq_len), generator=g)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False)
    assert out.logits.shape == (2, seq_len, spec.vocab_size)
    assert torch.isfinite(out.logits).all()
    return model


@settings(max_examples=150, **SETTINGS)
@given(data=valid_spec_dicts(), st_data=st.data())
def test_random_valid_specs_build_and_run(data, st_data):
    note(json.dumps(data))
    spec = ModelSpec.from_dict(copy.deepcopy(data))
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert ModelSpec.from_json(json.dumps(data)) == spec
    seq_len = st_data.draw(st.integers(1, spec.max_seq_len), label="seq_len")
    model = check_builds_and_runs(spec, seq_len)
    # a training step also works and gives finite gradients (dropout active)
    model.train()
    ids = torch.randint(0, spec.vocab_size, (2, seq_len))
    out = model(input_ids=ids, labels=ids, use_cache=False)
    if seq_len > 1:
        assert torch.isfinite(out.loss)
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_valid_strategy_covers_every_option():
    """The valid-spec strategy reaches every block type and option (so the property above means something)."""
    seen: set = set()

    @settings(max_examples=300, database=None, **SETTINGS)
    @given(valid_spec_dicts())
    def collect(data):
        seen.add(("tied", data["tie_embeddings"]))
        for b in data["blocks"]:
            seen.add(("block", b["type"]))
            if b["type"] == "embedding":
                seen.add(("scale", b["scale"]))
            if b["type"] == "positional":
                seen.add(("pos", b["kind"]))
                if b.get("local_rope_theta"):
                    seen.add("local_rope_theta")
            if b["type"] == "transformer":
                seen.add(("placement", b["norm_placement"]))
                seen.add(("residual", b["residual"]))
                if "full_attention_every" in b:
                    seen.add("full_attention_every")
            a = b.get("attention")
            if a:
                kv = a.get("n_kv_heads") or a["n_heads"]
                seen.add(("attn", "mha" if kv == a["n_heads"] else "mqa" if kv == 1 else "gqa"))
                for k in ("head_dim", "qk_norm", "sliding_window"):
                    if a.get(k):
                        seen.add(k)
            m = b.get("mlp")
            if m:
                seen.add(("act", m["activation"], m["gated"]))
            n = b.get("norm")
            if n:
                seen.add(("norm", n["kind"]))

    collect()
    expected = {("tied", True), ("tied", False), ("scale", True), ("scale", False),
                "local_rope_theta", "full_attention_every", "head_dim", "qk_norm", "sliding_window"}
    expected |= {("block", t) for t in ["embedding", "positional", "transformer", "attention", "mlp", "norm",
                                        "final_norm", "lm_head"]}
    expected |= {("pos", k) for k in POSITIONAL_KINDS}
    expected |= {("placement", p) for p in PLACEMENTS} | {("residual", r) for r in ["sequential", "parallel"]}
    expected |= {("attn", k) for k in ["mha", "gqa", "mqa"]}
    expected |= {("act", a, g) for a in ACTIVATIONS for g in (True, False)}
    expected |= {("norm", k) for k in ["layernorm", "rmsnorm"]}
    assert expected <= seen, sorted(map(str, expected - seen))


# ----------------------------------------------------------------------------- junk specs

json_scalars = (
    st.none() | st.booleans()
    | st.integers(-3, 3) | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, -1, 1, 2**53, 2**63, 10**400, -(10**400), 1 << 20, (1 << 20) + 1, 16385, 257])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.5, 1.0, -0.0, 1e-13, 1e300, 2.0**53])
    | st.text(max_size=8)
    | st.sampled_from(["rope", "embedding", "os.system", "torch.nn.Linear", "rmsnorm", "parallel", "x" * 2001])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


def _containers(obj, path=()):
    """(path, container) for every dict and list inside obj."""
    if isinstance(obj, (dict, list)):
        yield path, obj
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in items:
            yield from _containers(v, path + (k,))


@st.composite
def mutations(draw, data):
    """Apply one random mutation to a spec dict in place (or return a replacement value)."""
    blocks = data["blocks"]
    op = draw(st.sampled_from(["drop", "duplicate", "swap", "set", "set", "set", "unknown_key", "delete_key",
                               "block_type", "replace_blocks", "replace_top"]))
    note(f"mutation: {op}")
    if op == "drop" and blocks:
        del blocks[draw(st.integers(0, len(blocks) - 1))]
    elif op == "duplicate" and blocks:
        i = draw(st.integers(0, len(blocks) - 1))
        blocks.insert(draw(st.integers(0, len(blocks))), copy.deepcopy(blocks[i]))
    elif op == "swap" and len(blocks) > 1:
        i, j = draw(st.integers(0, len(blocks) - 1)), draw(st.integers(0, len(blocks) - 1))
        blocks[i], blocks[j] = blocks[j], blocks[i]
    elif op in ("set", "unknown_key", "delete_key"):
        dicts = [c for _, c in _containers(data) if isinstance(c, dict)]
        target = draw(st.sampled_from(dicts))
        if op == "set" and target:
            key = draw(st.sampled_from(sorted(target)))
            target[key] = draw(json_values)
        elif op == "delete_key" and target:
            del target[draw(st.sampled_from(sorted(target)))]
        else:
            target[draw(st.text(max_size=12) | st.sampled_from(["type", "__class__", "blocks", "n_heads"]))] = \
                draw(json_values)
    elif op == "block_type" and blocks:
        i = draw(st.integers(0, len(blocks) - 1))
        if isinstance(blocks[i], dict):
            blocks[i]["type"] = draw(json_values | st.sampled_from(["transformer", "attention", "mlp", "norm",
                                                                    "final_norm", "positional"]))
        else:
            blocks[i] = draw(json_values)
    elif op == "replace_blocks":
        data["blocks"] = draw(json_values)
    elif op == "replace_top":
        return draw(json_values)
    return data


@st.composite
def junk_specs(draw):
    data = draw(valid_spec_dicts())
    for _ in range(draw(st.integers(1, 3))):
        data = draw(mutations(data))
        if not isinstance(data, dict) or not isinstance(data.get("blocks"), list):
            break
    return data


def _only_spec_errors(parse, value):
    try:
        return parse(value)
    except SpecError as e:
        assert e.problems, "SpecError without problems"
        for p in e.problems:
            assert p.block is None or isinstance(p.block, int)
            assert isinstance(p.field, str) and isinstance(p.message, str) and p.message
            assert SpecError.line(p).startswith("spec" if p.block is None else f"block {p.block}")
        return None


@settings(max_examples=400, **SETTINGS)
@given(junk_specs())
def test_junk_specs_raise_only_spec_errors(data):
    note(repr(data)[:2000])
    spec = _only_spec_errors(ModelSpec.from_dict, copy.deepcopy(data))
    try:
        text = json.dumps(data)
    except (ValueError, TypeError):  # e.g. a key that json cannot write
        text = None
    if text is not None:
        spec_from_text = _only_spec_errors(ModelSpec.from_json, text)
        assert (spec_from_text is None) == (spec is None)
        if spec is not None:
            assert spec_from_text == spec
    if spec is None:
        return
    # the mutation happened to be valid: it must round-trip and (if small enough) build and run
    assert ModelSpec.from_json(spec.to_json()) == spec
    est = estimate(spec)
    assume(est.params <= MAX_BUILD_PARAMS)
    check_builds_and_runs(spec, min(spec.max_seq_len, 8))


EDGE_VALUES = [
    None, True, False, 0, -1, 1, 2, 3, 0.0, -0.0, 0.5, 0.999, 1.0, 1.5, -0.5, 1e-13, 1e300, -1e300,
    float("nan"), float("inf"), float("-inf"), 2**53, 2**53 + 1, 2**63, 10**400, -(10**400), 1 << 20, (1 << 20) + 1,
    16384, 16385, 256, 257, 4096, 1e20, "", "1", "rope", "layernorm", "x" * 2001, [], [1], {}, {"a": 1},
]


def _leaves(obj, path=()):
    """(container, key, path) for every scalar or container value inside a spec dict."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        yield obj, k, path + (k,)
        if isinstance(v, (dict, list)):
            yield from _leaves(v, path + (k,))


@settings(max_examples=400, **SETTINGS)
@given(data=valid_spec_dicts(), st_data=st.data())
def test_edge_value_in_any_field_raises_only_spec_errors(data, st_data):
    """Every field of a valid spec, set to an edge value (out of range, wrong type, huge, non-finite)."""
    leaves = list(_leaves(data))
    container, key, _ = leaves[st_data.draw(st.integers(0, len(leaves) - 1), label="field")]
    container[key] = st_data.draw(st.sampled_from(EDGE_VALUES) | st.sampled_from(EDGE_VALUES) | json_values,
                                  label="value")
    note(json.dumps(data)[:2000])
    spec = _only_spec_errors(ModelSpec.from_dict, copy.deepcopy(data))
    spec_from_text = _only_spec_errors(ModelSpec.from_json, json.dumps(data))
    assert spec_from_text == spec
    if spec is not None and estimate(spec).params <= MAX_BUILD_PARAMS:
        check_builds_and_runs(spec, min(spec.max_seq_len, 8))


FULL_SPEC = {
    "vocab_size": 20, "d_model": 8, "max_seq_len": 8, "tie_embeddings": False, "init_std": 0.02, "dropout": 0.1,
    "name": "full", "description": "every field", "follows": "", "version": 1,
    "blocks": [
        {"type": "embedding", "scale": True},
        {"type": "positional", "kind": "rope", "rope_theta": 10000.0, "local_rope_theta": 100.0},
        {"type": "transformer", "repeat": 2, "norm_placement": "sandwich", "residual": "parallel",
         "full_attention_every": 2,
         "attention": {"n_heads": 2, "n_kv_heads": 1, "head_dim": 4, "qkv_bias": True, "out_bias": True,
                       "qk_norm": True, "sliding_window": 4, "dropout": 0.1},
         "mlp": {"activation": "silu", "gated": True, "hidden": 16, "bias": True},
         "norm": {"kind": "layernorm", "eps": 1e-5, "bias": True}},
        {"type": "attention", "attention": {"n_heads": 2, "n_kv_heads": None, "head_dim": None, "qkv_bias": False,
                                            "out_bias": False, "qk_norm": False, "sliding_window": None,
                                            "dropout": 0.0},
         "norm": {"kind": "rmsnorm", "eps": 1e-6, "bias": False}},
        {"type": "mlp", "mlp": {"activation": "gelu", "gated": False, "hidden": None, "bias": False}, "norm": None},
        {"type": "norm", "norm": {"kind": "rmsnorm", "eps": 1e-6, "bias": False}},
        {"type": "final_norm", "norm": {"kind": "layernorm", "eps": 1e-5, "bias": False}},
        {"type": "lm_head"},
    ],
}


def test_every_field_with_every_edge_value_raises_only_spec_errors():
    """Exhaustive: each field of a spec that uses every field, set to each edge value, parses or gives a SpecError."""
    ModelSpec.from_dict(copy.deepcopy(FULL_SPEC))  # the starting point is valid
    n_fields = len(list(_leaves(FULL_SPEC)))
    assert n_fields > 50
    failures = []
    for i in range(n_fields):
        for value in EDGE_VALUES:
            data = copy.deepcopy(FULL_SPEC)
            container, key, path = list(_leaves(data))[i]
            container[key] = value
            for parse, arg in ((ModelSpec.from_dict, data), (ModelSpec.from_json, json.dumps(data))):
                try:
                    parse(arg)
                except SpecError:
                    pass
                except Exception as e:  # noqa: BLE001 - the point is to list every crash
                    shown = repr(value) if len(repr(value)) < 30 else f"<{type(value).__name__} {repr(value)[:12]}...>"
                    failures.append(f"{parse.__name__}: {'.'.join(map(str, path))} = {shown}: "
                                    f"{type(e).__name__}: {e}")
    assert not failures, f"{len(failures)} crashes, e.g.:\n" + "\n".join(failures[:20])


@settings(max_examples=200, **SETTINGS)
@given(json_values)
def test_any_json_value_raises_only_spec_errors(value):
    spec = _only_spec_errors(ModelSpec.from_dict, copy.deepcopy(value))
    assert spec is None or isinstance(spec, ModelSpec)
    try:
        text = json.dumps(value)
    except (ValueError, TypeError):
        return
    _only_spec_errors(ModelSpec.from_json, text)


@settings(max_examples=200, **SETTINGS)
@given(st.text(max_size=60) | st.binary(max_size=60))
def test_any_text_raises_only_spec_errors(text):
    _only_spec_errors(ModelSpec.from_json, text)
