"""The model spec: global sizes plus an ordered list of blocks, as typed, versioned, JSON-safe data.

A spec is *data*, never code. Reading one only matches block type names against the closed
`BLOCK_TYPES` registry below; nothing named in a spec is ever imported or executed. Parsing and
validation report every problem at once (see `validate.py`), so a learner fixes a spec in one go.
"""

from __future__ import annotations

import copy
import json
import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Literal, Union

from .validate import Problem, SpecError, validate

SPEC_VERSION = 1
MAX_SPEC_BYTES = 64 * 1024  # a spec is a few hundred bytes; anything bigger is not a spec


def _f(default=MISSING, *, lo=None, hi=None, help="", factory=MISSING):
    """A spec field with inclusive bounds and a one-line help text (shown in errors and in the UI)."""
    meta = {"lo": lo, "hi": hi, "help": help}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- sub-specs


@dataclass
class NormSpec:
    """How to normalize activations: LayerNorm (mean and scale) or RMSNorm (scale only)."""

    kind: Literal["layernorm", "rmsnorm"] = _f("rmsnorm", help="layernorm or rmsnorm")
    eps: float = _f(1e-5, lo=1e-12, hi=0.1, help="small constant added to the variance")
    bias: bool = _f(False, help="learn an additive bias (layernorm only)")


@dataclass
class AttentionSpec:
    """Causal self-attention. n_kv_heads < n_heads gives GQA; n_kv_heads = 1 gives MQA."""

    n_heads: int = _f(4, lo=1, hi=1024, help="number of query heads")
    n_kv_heads: int | None = _f(None, lo=1, hi=1024, help="key/value heads; fewer than heads = GQA, 1 = MQA (empty: same as heads)")
    head_dim: int | None = _f(None, lo=1, hi=4096, help="size of each head (empty: d_model / heads)")
    qkv_bias: bool = _f(False, help="bias on the q, k and v projections")
    out_bias: bool = _f(False, help="bias on the output projection")
    qk_norm: bool = _f(False, help="RMSNorm each query and key head before attention (Qwen3, Gemma 3)")
    sliding_window: int | None = _f(None, lo=1, hi=1 << 20, help="attend only to the last N tokens (empty: all tokens)")
    dropout: float = _f(0.0, lo=0.0, help="dropout on attention probabilities while training")

    # --- the sizes an empty field stands for (resolved here, once, for the model, estimate and export)
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_heads, or one per query head when empty (plain multi-head attention)."""
        return self.n_kv_heads or self.n_heads

    def head_size(self, d_model: int) -> int:
        """Size of each head: head_dim, or d_model / n_heads when empty."""
        return self.head_dim or d_model // self.n_heads


@dataclass
class MLPSpec:
    """Position-wise feed-forward network; gated = GLU variant (SwiGLU = silu + gated)."""

    activation: Literal["gelu", "gelu_tanh", "relu", "silu"] = _f("gelu", help="nonlinearity")
    gated: bool = _f(False, help="multiply by a learned gate (SwiGLU / GeGLU)")
    hidden: int | None = _f(None, lo=1, hi=1 << 18, help="hidden width (empty: 4 × d_model)")
    bias: bool = _f(False, help="bias on the projections")

    def hidden_size(self, d_model: int) -> int:
        """Hidden width: hidden, or 4 × d_model when empty (GPT-2's ratio)."""
        return self.hidden or 4 * d_model


# ----------------------------------------------------------------------------- blocks


@dataclass
class EmbeddingBlock:
    """Turns token ids into vectors of size d_model."""

    type: Literal["embedding"] = "embedding"
    scale: bool = _f(False, help="multiply embeddings by sqrt(d_model), as Gemma does")


@dataclass
class PositionalBlock:
    """Tells the model where each token is: added vectors (learned, sinusoidal) or inside attention (rope, alibi)."""

    type: Literal["positional"] = "positional"
    kind: Literal["learned", "sinusoidal", "rope", "alibi", "none"] = _f("rope", help="how positions are encoded")
    rope_theta: float = _f(10000.0, lo=1.0, hi=1e9, help="RoPE base frequency")
    local_rope_theta: float | None = _f(None, lo=1.0, hi=1e9, help="RoPE base for sliding-window layers (Gemma 3)")


@dataclass
class TransformerBlock:
    """Attention then MLP, each wrapped in a residual connection; `repeat` copies get their own weights."""

    type: Literal["transformer"] = "transformer"
    repeat: int = _f(1, lo=1, hi=256, help="how many layers of this kind, each with its own weights")
    attention: AttentionSpec = _f(factory=AttentionSpec)
    mlp: MLPSpec = _f(factory=MLPSpec)
    norm: NormSpec = _f(factory=NormSpec)
    norm_placement: Literal["pre", "post", "sandwich", "classic_post"] = _f(
        "pre", help="pre: norm the input of attention/MLP; post: norm their output; sandwich: both; "
        "classic_post: norm after the residual add (original Transformer)"
    )
    residual: Literal["sequential", "parallel"] = _f(
        "sequential", help="sequential: MLP sees attention's output; parallel: both read the same input (GPT-J)"
    )
    full_attention_every: int | None = _f(
        None, lo=1, hi=256, help="with a sliding window, every N-th layer attends to everything (Gemma 3: 6)"
    )


@dataclass
class AttentionLayerBlock:
    """One standalone attention layer with a residual connection, for free layer orders."""

    type: Literal["attention"] = "attention"
    attention: AttentionSpec = _f(factory=AttentionSpec)
    norm: NormSpec | None = _f(factory=NormSpec, help="norm before the layer (absent: no norm)")


@dataclass
class MLPLayerBlock:
    """One standalone MLP layer with a residual connection, for free layer orders."""

    type: Literal["mlp"] = "mlp"
    mlp: MLPSpec = _f(factory=MLPSpec)
    norm: NormSpec | None = _f(factory=NormSpec, help="norm before the layer (absent: no norm)")


@dataclass
class NormBlock:
    """A normalization on the residual stream between layers."""

    type: Literal["norm"] = "norm"
    norm: NormSpec = _f(factory=NormSpec)


@dataclass
class FinalNormBlock:
    """The normalization after the last layer, before the LM head."""

    type: Literal["final_norm"] = "final_norm"
    norm: NormSpec = _f(factory=NormSpec)


@dataclass
class LMHeadBlock:
    """Turns the final vectors into one score (logit) per vocabulary token."""

    type: Literal["lm_head"] = "lm_head"


Block = Union[
    EmbeddingBlock, PositionalBlock, TransformerBlock, AttentionLayerBlock, MLPLayerBlock, NormBlock,
    FinalNormBlock, LMHeadBlock,
]

# The closed registry: the only block types a spec can name.
BLOCK_TYPES: dict[str, type] = {
    "embedding": EmbeddingBlock,
    "positional": PositionalBlock,
    "transformer": TransformerBlock,
    "attention": AttentionLayerBlock,
    "mlp": MLPLayerBlock,
    "norm": NormBlock,
    "final_norm": FinalNormBlock,
    "lm_head": LMHeadBlock,
}


def block_help(block_type: str) -> str:
    """The one-line "what this block does" text for learners."""
    return (BLOCK_TYPES[block_type].__doc__ or "").strip()


# ----------------------------------------------------------------------------- the spec


@dataclass
class ModelSpec:
    """A whole model: global sizes and the ordered block list."""

    vocab_size: int = _f(256, lo=2, hi=1 << 20, help="number of tokens (follows the tokenizer)")
    d_model: int = _f(128, lo=1, hi=16384, help="width of the residual stream")
    max_seq_len: int = _f(256, lo=1, hi=1 << 20, help="longest context the model handles")
    tie_embeddings: bool = _f(True, help="LM head reuses the embedding matrix")
    init_std: float = _f(0.02, lo=0.0, hi=1.0, help="std of the normal weight init")
    dropout: float = _f(0.0, lo=0.0, help="dropout on embeddings and residual branches while training")
    blocks: list[Block] = _f(factory=list)
    name: str = _f("", help="short name")
    description: str = _f("", help="one line for humans")
    follows: str = _f("", help="the architecture this spec follows")
    version: int = _f(SPEC_VERSION, lo=1, hi=SPEC_VERSION, help="spec format version")

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
            spec = _parse(cls, data, "", None, problems)
        except RecursionError:
            raise SpecError([Problem(None, "spec", "is nested too deeply to be a spec")]) from None
        if not problems:
            problems = validate(spec)
        if problems:
            raise SpecError(problems)
        return spec

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelSpec":
        if not isinstance(text, (str, bytes)):
            raise SpecError([Problem(None, "spec", "must be JSON text")])
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise SpecError([Problem(None, "spec", "is not UTF-8 text; save the JSON as UTF-8")]) from None
        if len(text.encode("utf-8", "replace")) > MAX_SPEC_BYTES:
            raise SpecError([Problem(None, "spec", f"is larger than {MAX_SPEC_BYTES // 1024} KB; a spec is a short "
                                     "JSON object, paste only the spec")])
        try:
            data = json.loads(text)
        except RecursionError:
            raise SpecError([Problem(None, "spec", "is nested too deeply to be a spec")]) from None
        except ValueError as e:
            raise SpecError([Problem(None, "spec", f"is not valid JSON ({e}); fix the JSON syntax")]) from None
        return cls.from_dict(data)

    def copy(self, **changes) -> "ModelSpec":
        spec = copy.deepcopy(self)
        for k, v in changes.items():
            setattr(spec, k, v)
        return spec

    # --- derived views -------------------------------------------------------------
    def positional(self) -> str:
        """The positional encoding kind ("none" when there is no positional block)."""
        return next((b.kind for b in self.blocks if isinstance(b, PositionalBlock)), "none")

    def layer_plan(self) -> list[tuple[Block, AttentionSpec | None, int | None]]:
        """(block, its attention or None, this layer's sliding window) for every residual-stream layer,
        transformer repeats expanded: the one expansion the model, the estimate and the export share."""
        plan = []
        for b in self.blocks:
            if isinstance(b, TransformerBlock):
                for r in range(b.repeat):
                    full = b.full_attention_every is not None and (r + 1) % b.full_attention_every == 0
                    plan.append((b, b.attention, None if full else b.attention.sliding_window))
            elif isinstance(b, AttentionLayerBlock):
                plan.append((b, b.attention, b.attention.sliding_window))
            elif isinstance(b, (MLPLayerBlock, NormBlock)):
                plan.append((b, None, None))
        return plan

    def summary(self) -> str:
        """One line, e.g. 'embedding · rope · transformer×6 · final_norm · lm_head'."""
        parts = []
        for b in self.blocks:
            if isinstance(b, PositionalBlock):
                parts.append(b.kind)
            elif isinstance(b, TransformerBlock) and b.repeat > 1:
                parts.append(f"transformer×{b.repeat}")
            else:
                parts.append(b.type)
        return " · ".join(parts)


# ----------------------------------------------------------------------------- parsing


def _parse(cls, data, path: str, block: int | None, problems: list):
    """Build dataclass `cls` from untrusted JSON data, collecting problems instead of raising."""
    if not isinstance(data, dict):
        problems.append(Problem(block, path or "spec", f"must be a JSON object, got {_kind(data)}"))
        return cls() if cls is not ModelSpec else ModelSpec()
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            allowed = ", ".join(sorted(known - {"type"}))
            problems.append(Problem(block, _join(path, str(key)[:40]),  # a key is never echoed whole
                                    f"is not a field of {_label(cls)}; remove it (allowed: {allowed})"))
    values = {}
    for f in fields(cls):
        if f.name not in data or f.name == "type":
            continue
        fpath = _join(path, f.name)
        if f.name == "blocks" and cls is ModelSpec:
            values["blocks"] = _parse_blocks(data["blocks"], problems)
        else:
            ok, value = _parse_value(hints[f.name], data[f.name], fpath, block, f.metadata, problems)
            if ok:
                values[f.name] = value
    return cls(**values)


def _parse_blocks(data, problems: list) -> list:
    if not isinstance(data, list):
        problems.append(Problem(None, "blocks", f"must be a list of blocks, got {_kind(data)}"))
        return []
    blocks = []
    for i, raw in enumerate(data):
        if not isinstance(raw, dict):
            problems.append(Problem(i, "", f"must be a JSON object with a 'type', got {_kind(raw)}"))
            continue
        btype = raw.get("type")
        if not isinstance(btype, str) or btype not in BLOCK_TYPES:
            problems.append(Problem(i, "type", f"{_short(btype)} is not a block type; use one of: "
                                    f"{', '.join(BLOCK_TYPES)}"))
            continue
        blocks.append(_parse(BLOCK_TYPES[btype], raw, "", i, problems))
    return blocks


def _parse_value(hint, value, path: str, block, meta, problems: list):
    """Check one value against its type hint; returns (ok, value)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return True, None
        hint = next(a for a in options if a is not type(None))
        origin = typing.get_origin(hint)
    help_ = f" ({meta['help']})" if meta and meta.get("help") else ""
    if value is None and not is_dataclass(hint):  # an emptied field: say so in words (no JSON "null")
        what = (f"use one of: {', '.join(typing.get_args(hint))}" if origin is Literal else
                "it must be true or false" if hint is bool else "it must be a whole number" if hint is int else
                "it must be a finite number" if hint is float else "it must be a short text")
        problems.append(Problem(block, path, f"is empty; {what}{help_}"))
        return False, None
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices and isinstance(value, str):
            return True, value
        problems.append(Problem(block, path, f"{_short(value)} is not allowed; use one of: {', '.join(choices)}"))
        return False, None
    if is_dataclass(hint):
        return True, _parse(hint, value, path, block, problems)
    if hint is bool:
        if isinstance(value, bool):
            return True, value
        problems.append(Problem(block, path, f"must be true or false, got {_short(value)}{help_}"))
        return False, None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                value = int(value)
            else:
                problems.append(Problem(block, path, f"must be a whole number, got {_short(value)}{help_}"))
                return False, None
        return _check_bounds(value, path, block, meta, problems)
    if hint is float:
        try:
            number = float(value) if not isinstance(value, bool) and isinstance(value, (int, float)) else None
        except OverflowError:
            number = None
        if number is None or not math.isfinite(number):
            problems.append(Problem(block, path, f"must be a finite number, got {_short(value)}{help_}"))
            return False, None
        return _check_bounds(number, path, block, meta, problems)
    if hint is str:
        if isinstance(value, str) and len(value) <= 2000:
            return True, value
        problems.append(Problem(block, path, "must be a short text"))
        return False, None
    raise TypeError(f"spec field type {hint!r} has no parser")  # a bug in this file, not in the user's spec


def _check_bounds(value, path, block, meta, problems):
    lo, hi = (meta or {}).get("lo"), (meta or {}).get("hi")
    if lo is not None and value < lo:
        problems.append(Problem(block, path, f"is {_short(value)}; it must be at least {lo}"))
        return False, None
    if hi is not None and value > hi:
        problems.append(Problem(block, path, f"is {_short(value)}; it must be at most {hi}"))
        return False, None
    return True, value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "nothing (empty)"}.get(
        type(value), "a number")


def _short(value) -> str:
    """A value as short JSON for messages (never fails: deep or huge values are summarized)."""
    if isinstance(value, (dict, list)):
        return _kind(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return "a huge number"
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _label(cls) -> str:
    if cls is ModelSpec:
        return "the spec"
    if hasattr(cls, "type"):
        return f"an {cls.type} block" if cls.type[0] in "aeiou" else f"a {cls.type} block"
    return {NormSpec: "norm settings", AttentionSpec: "attention settings", MLPSpec: "mlp settings"}[cls]
