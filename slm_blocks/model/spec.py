"""The model spec: global sizes plus an ordered list of blocks, as typed, versioned, JSON-safe data.

A spec is *data*, never code. Reading one only matches block type names against the registry of block
modules (blocks/); nothing named in a spec is ever imported or executed. Each block's fields, checks and
description are its module's; here are the global sizes, the parsing of the block list and the views of the
whole (layer plan, summary). Parsing and validation report every problem at once (see `validate.py`), so a
learner fixes a spec in one go.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import ClassVar

from .blocks import REGISTRY, module_of
from .blocks.attention import AttentionSpec  # noqa: F401  (the sub-specs, where callers have always found them)
from .blocks.mlp import MLPSpec  # noqa: F401
from .blocks.norm import NormSpec  # noqa: F401
from .fields import Problem, join, kind, parse_record, setting, short
from .validate import SpecError, validate

SPEC_VERSION = 1
MAX_SPEC_BYTES = 64 * 1024  # a spec is a few hundred bytes; anything bigger is not a spec


# ----------------------------------------------------------------------------- block types


class _BlockTypes(Mapping):
    """Type name -> the block's dataclass, read live from the registry (a test may register a toy type)."""

    def __getitem__(self, block_type: str) -> type:
        return REGISTRY[block_type].Spec

    def __iter__(self):
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


# The closed registry: the only block types a spec can name.
BLOCK_TYPES = _BlockTypes()


def block_help(block_type: str) -> str:
    """The one-line "what this block does" text for learners."""
    return (BLOCK_TYPES[block_type].__doc__ or "").strip()


# ----------------------------------------------------------------------------- the spec


@dataclass
class ModelSpec:
    """A whole model: global sizes and the ordered block list."""

    WHAT: ClassVar[str] = "the spec"

    vocab_size: int = setting(256, lo=2, hi=1 << 20, label="Vocabulary size", help="number of tokens (follows the tokenizer)")
    d_model: int = setting(128, lo=1, hi=16384, label="Width (d_model)", help="width of the residual stream")
    max_seq_len: int = setting(256, lo=1, hi=1 << 20, label="Context length", help="longest context the model handles")
    tie_embeddings: bool = setting(True, label="Tie embedding and head", help="LM head reuses the embedding matrix")
    init_std: float = setting(0.02, lo=0.0, hi=1.0, label="Init std", help="std of the normal weight init")
    dropout: float = setting(0.0, lo=0.0, label="Dropout", help="dropout on embeddings and residual branches while training")
    blocks: list = setting(factory=list, parse=lambda data, path, problems: (True, _parse_blocks(data, path,
                                                                                                      problems)))
    name: str = setting("", help="short name")
    description: str = setting("", help="one line for humans")
    follows: str = setting("", help="the architecture this spec follows")
    version: int = setting(SPEC_VERSION, lo=1, hi=SPEC_VERSION, help="spec format version")

    # --- serialization -------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data) -> "ModelSpec":
        """Parse and validate; raises SpecError listing every problem."""
        problems: list[Problem] = []
        try:
            spec = parse_record(cls, data, "", problems, text=False)  # a spec's numbers are JSON numbers
        except RecursionError:
            raise SpecError([Problem("", "is nested too deeply to be a spec")]) from None
        if not problems:
            problems = validate(spec)
        if problems:
            raise SpecError(problems)
        return spec

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelSpec":
        if not isinstance(text, (str, bytes)):
            raise SpecError([Problem("", "must be JSON text")])
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise SpecError([Problem("", "is not UTF-8 text; save the JSON as UTF-8")]) from None
        if len(text.encode("utf-8", "replace")) > MAX_SPEC_BYTES:
            raise SpecError([Problem("", f"is larger than {MAX_SPEC_BYTES // 1024} KB; a spec is a short "
                                     "JSON object, paste only the spec")])
        try:
            data = json.loads(text)
        except RecursionError:
            raise SpecError([Problem("", "is nested too deeply to be a spec")]) from None
        except ValueError as e:
            raise SpecError([Problem("", f"is not valid JSON ({e}); fix the JSON syntax")]) from None
        return cls.from_dict(data)

    def copy(self, **changes) -> "ModelSpec":
        spec = copy.deepcopy(self)
        for k, v in changes.items():
            setattr(spec, k, v)
        return spec

    # --- derived views -------------------------------------------------------------
    def find(self, role: str):
        """The first block with this role ("embedding", "positional", "final_norm", "lm_head"), or None."""
        return next((b for b in self.blocks if module_of(b).ROLE == role), None)

    def positional(self) -> str:
        """The positional encoding kind ("none" when there is no positional block)."""
        pos = self.find("positional")
        return pos.kind if pos is not None else "none"

    def layer_plan(self) -> list[tuple[object, AttentionSpec | None, int | None]]:
        """(block, its attention or None, this layer's sliding window) for every residual-stream layer,
        transformer repeats expanded: the one expansion the model, the estimate and the export share."""
        return [(b, attn, window) for b in self.blocks for attn, window in module_of(b).plan(b)]

    def describe(self) -> list[tuple[str, str]]:
        """(name, details) of every block: the one description the Build tab, the Train preview and the card use."""
        return [module_of(b).describe(b, self) for b in self.blocks]

    def summary(self) -> str:
        """One line, e.g. 'embedding · rope · transformer×6 · final_norm · lm_head'."""
        return " · ".join(name for name, _ in self.describe())


# ----------------------------------------------------------------------------- parsing


def _parse_blocks(data, path: str, problems: list) -> list:
    """The block list: each block's `type` picks its dataclass from the closed registry, nothing else."""
    if not isinstance(data, list):
        problems.append(Problem(path, f"must be a list of blocks, got {kind(data)}"))
        return []
    blocks = []
    for i, raw in enumerate(data):
        at = f"{path}[{i}]"
        if not isinstance(raw, dict):
            problems.append(Problem(at, f"must be a JSON object with a 'type', got {kind(raw)}"))
            continue
        btype = raw.get("type")
        if not isinstance(btype, str) or btype not in BLOCK_TYPES:
            named = "an empty type is" if btype is None else f"{short(btype)} is"
            problems.append(Problem(join(at, "type"), f"{named} not a block type; use one of: "
                                    f"{', '.join(BLOCK_TYPES)}"))
            continue
        blocks.append(parse_record(BLOCK_TYPES[btype], raw, at, problems, text=False))
    return blocks
