"""Checks that a parsed spec describes a model that can be built, reporting every problem at once.

Each problem names the block (by index), the field and the fix, so the UI can show it next to the
offending block and a learner never meets a shape error from deep inside PyTorch.

The rules read blocks by their `type` name, so this module imports nothing from spec.py (spec.py calls
`validate` when it parses: the import points one way).
"""

from __future__ import annotations

from .fields import Problem, SettingsError


class SpecError(SettingsError):
    """A spec that cannot be built; `.problems` lists every reason."""

    def __init__(self, problems: list[Problem]):
        super().__init__(problems, "model spec")

    @staticmethod
    def line(p: Problem) -> str:
        """'block 2 · attention.n_heads: ...' inside a block, 'spec · d_model: ...' for a global field."""
        return str(p) if p.block is not None else f"spec · {p}" if p.path else f"spec: {p}"


def validate(spec: "ModelSpec") -> list[Problem]:
    """All problems of a parsed spec (empty list = buildable)."""
    problems: list[Problem] = []
    add = lambda block, field, msg: problems.append(Problem(at(block, field), msg))  # noqa: E731

    if spec.dropout >= 1:
        add(None, "dropout", f"is {spec.dropout}; use a value in [0, 1), e.g. 0.1")
    _check_order(spec, add)
    rope = spec.positional() == "rope"
    if spec.positional() == "sinusoidal" and spec.d_model % 2:
        add(None, "d_model", f"is {spec.d_model}; sinusoidal positions need an even d_model")

    for i, b in enumerate(spec.blocks):
        if b.type == "positional" and b.local_rope_theta is not None and b.kind != "rope":
            add(i, "local_rope_theta", "is only used with kind 'rope'; leave it empty")
        if b.type in ("transformer", "attention"):
            _check_attention(spec, i, b.attention, rope, add)
        if b.type == "transformer":
            if b.norm_placement == "classic_post" and b.residual == "parallel":
                add(i, "residual", "'parallel' cannot be combined with norm_placement 'classic_post'; "
                    "use 'sequential' or another norm placement")
            if b.full_attention_every is not None and b.attention.sliding_window is None:
                add(i, "full_attention_every", "only matters with attention.sliding_window; set a window or "
                    "leave it empty")
        norm = getattr(b, "norm", None)  # a NormSpec, or None for a layer without a norm
        if norm is not None and norm.bias and norm.kind == "rmsnorm":
            add(i, "norm.bias", "RMSNorm has no bias; set bias to false or kind to 'layernorm'")
    return problems


def at(block: int | None, field: str) -> str:
    """The path of a field of block `block` (None: a global field of the spec)."""
    return field if block is None else f"blocks[{block}].{field}" if field else f"blocks[{block}]"


# block types that sit on the residual stream between the positional block and final_norm
LAYER_TYPES = ("transformer", "attention", "mlp", "norm")


def _check_order(spec: "ModelSpec", add) -> None:
    kinds = [b.type for b in spec.blocks]
    for name in ("embedding", "lm_head"):
        if name not in kinds:
            add(None, "blocks", f"there is no '{name}' block; add one "
                + ("at the start" if name == "embedding" else "at the end"))
        for i in [i for i, k in enumerate(kinds) if k == name][1:]:
            add(i, "type", f"a second '{name}' block; remove it (a model has exactly one)")
    for name in ("positional", "final_norm"):
        for i in [i for i, k in enumerate(kinds) if k == name][1:]:
            add(i, "type", f"a second '{name}' block; remove it (a model has at most one)")
    if kinds and kinds[0] != "embedding" and "embedding" in kinds:
        add(kinds.index("embedding"), "type", "the embedding block must come first; move it to the top")
    if kinds and kinds[-1] != "lm_head" and "lm_head" in kinds:
        add(kinds.index("lm_head"), "type", "the lm_head block must come last; move it to the bottom")
    layer_idx = [i for i, k in enumerate(kinds) if k in LAYER_TYPES]
    if "positional" in kinds and layer_idx and kinds.index("positional") > layer_idx[0]:
        add(kinds.index("positional"), "type", "the positional block must come before the first layer; "
            "move it right after the embedding")
    if "final_norm" in kinds and layer_idx and kinds.index("final_norm") < layer_idx[-1]:
        add(kinds.index("final_norm"), "type", "final_norm must come after the last layer; move it just "
            "above lm_head (or use a 'norm' block between layers)")


def _check_attention(spec: "ModelSpec", i: int, a: "AttentionSpec", rope: bool, add) -> None:
    heads_fit = a.head_dim is not None or spec.d_model % a.n_heads == 0
    if not heads_fit:
        divisors = [h for h in range(1, min(spec.d_model, 64) + 1) if spec.d_model % h == 0]
        add(i, "attention.n_heads", f"d_model {spec.d_model} is not divisible by n_heads {a.n_heads}; use one of "
            f"{', '.join(map(str, divisors[:10]))} or set attention.head_dim")
    kv = a.kv_heads()
    if a.n_heads % kv:
        add(i, "attention.n_kv_heads", f"n_heads {a.n_heads} is not divisible by n_kv_heads {kv}; use a divisor "
            f"of {a.n_heads} (1 = MQA, {a.n_heads} = MHA)")
    if rope and heads_fit and a.head_size(spec.d_model) % 2:
        add(i, "attention.head_dim", f"head_dim {a.head_size(spec.d_model)} is odd but RoPE rotates pairs of dimensions; "
            "use an even head_dim (or change n_heads)")
    if a.sliding_window is not None and a.sliding_window > spec.max_seq_len:
        add(i, "attention.sliding_window", f"window {a.sliding_window} is larger than max_seq_len "
            f"{spec.max_seq_len}; use at most {spec.max_seq_len} (or leave it empty for full attention)")
    if a.dropout >= 1:
        add(i, "attention.dropout", f"is {a.dropout}; use a value in [0, 1), e.g. 0.1")
