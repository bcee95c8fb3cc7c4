"""Checks that a parsed spec describes a model that can be built, reporting every problem at once.

Each problem names the block (by index), the field and the fix, so the UI can show it next to the
offending block and a learner never meets a shape error from deep inside PyTorch.

The rules that concern one block are its module's `check` (blocks/); here are the spec's own and the order of
the blocks, read from their roles. This module imports nothing from spec.py (spec.py calls `validate` when it
parses: the import points one way).
"""

from __future__ import annotations

from .blocks import module_of
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
    """All problems of a parsed spec (empty list = buildable): the spec's own, the block order, then each
    block's (its module's `check`)."""
    problems: list[Problem] = []
    if spec.dropout >= 1:
        problems.append(Problem("dropout", f"is {spec.dropout}; use a value in [0, 1), e.g. 0.1"))
    problems += _order_problems([module_of(b).ROLE for b in spec.blocks])
    for i, b in enumerate(spec.blocks):
        problems += module_of(b).check(b, spec, at(i, ""))
    return problems


def at(block: int | None, field: str) -> str:
    """The path of a field of block `block` (None: a global field of the spec)."""
    return field if block is None else f"blocks[{block}].{field}" if field else f"blocks[{block}]"


def _order_problems(roles: list[str]) -> list[Problem]:
    """The skeleton every model has: one embedding first, at most one positional block before the first layer,
    layers, at most one final_norm after the last layer, one lm_head last."""
    problems = []
    add = lambda block, field, msg: problems.append(Problem(at(block, field), msg))  # noqa: E731
    for name in ("embedding", "lm_head"):
        if name not in roles:
            add(None, "blocks", f"there is no '{name}' block; add one "
                + ("at the start" if name == "embedding" else "at the end"))
        for i in [i for i, k in enumerate(roles) if k == name][1:]:
            add(i, "type", f"a second '{name}' block; remove it (a model has exactly one)")
    for name in ("positional", "final_norm"):
        for i in [i for i, k in enumerate(roles) if k == name][1:]:
            add(i, "type", f"a second '{name}' block; remove it (a model has at most one)")
    if roles and roles[0] != "embedding" and "embedding" in roles:
        add(roles.index("embedding"), "type", "the embedding block must come first; move it to the top")
    if roles and roles[-1] != "lm_head" and "lm_head" in roles:
        add(roles.index("lm_head"), "type", "the lm_head block must come last; move it to the bottom")
    layer_idx = [i for i, k in enumerate(roles) if k == "layer"]
    if "positional" in roles and layer_idx and roles.index("positional") > layer_idx[0]:
        add(roles.index("positional"), "type", "the positional block must come before the first layer; "
            "move it right after the embedding")
    if "final_norm" in roles and layer_idx and roles.index("final_norm") < layer_idx[-1]:
        add(roles.index("final_norm"), "type", "final_norm must come after the last layer; move it just "
            "above lm_head (or use a 'norm' block between layers)")
    return problems
