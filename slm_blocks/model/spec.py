"""The model spec: global sizes plus an ordered list of blocks, as typed, versioned, JSON-safe data.

A spec is *data*, never code. Reading one only matches block type names against the closed
`BLOCK_TYPES` registry below; nothing named in a spec is ever imported or executed. Parsing and
validation report every problem at once (see `validate.py`), so a learner fixes a spec in one go.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal, Union

from .fields import Problem, join, kind, parse_record, setting, short
from .validate import SpecError, validate

SPEC_VERSION = 1
MAX_SPEC_BYTES = 64 * 1024  # a spec is a few hundred bytes; anything bigger is not a spec


# ----------------------------------------------------------------------------- sub-specs


@dataclass
class NormSpec:
    """How to normalize activations: LayerNorm (mean and scale) or RMSNorm (scale only)."""

    WHAT: ClassVar[str] = "norm settings"

    kind: Literal["layernorm", "rmsnorm"] = setting("rmsnorm", label="Norm kind", help="layernorm or rmsnorm")
    eps: float = setting(1e-5, lo=1e-12, hi=0.1, label="Norm epsilon", help="small constant added to the variance")
    bias: bool = setting(False, label="Norm bias", help="learn an additive bias (layernorm only)",
                         applies=lambda norm: norm.kind == "layernorm")


@dataclass
class AttentionSpec:
    """Causal self-attention. n_kv_heads < n_heads gives GQA; n_kv_heads = 1 gives MQA."""

    WHAT: ClassVar[str] = "attention settings"

    n_heads: int = setting(4, lo=1, hi=1024, label="Heads", help="number of query heads")
    n_kv_heads: int | None = setting(None, lo=1, hi=1024, label="KV heads", empty="same as heads",
                                      help="key/value heads; fewer than heads = GQA, 1 = MQA (empty: same as heads)")
    head_dim: int | None = setting(None, lo=1, hi=4096, label="Head size", empty="d_model / heads",
                                    help="size of each head (empty: d_model / heads)")
    qkv_bias: bool = setting(False, label="q/k/v bias", help="bias on the q, k and v projections")
    out_bias: bool = setting(False, label="Output bias", help="bias on the output projection")
    qk_norm: bool = setting(False, label="QK-norm", help="RMSNorm each query and key head before attention (Qwen3, Gemma 3)")
    sliding_window: int | None = setting(None, lo=1, hi=1 << 20, label="Sliding window", empty="all tokens",
                                          help="attend only to the last N tokens (empty: all tokens)")
    dropout: float = setting(0.0, lo=0.0, label="Attention dropout", help="dropout on attention probabilities while training")

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

    WHAT: ClassVar[str] = "mlp settings"

    activation: Literal["gelu", "gelu_tanh", "relu", "silu"] = setting("gelu", label="Activation", help="nonlinearity")
    gated: bool = setting(False, label="Gated (GLU)", help="multiply by a learned gate (SwiGLU / GeGLU)")
    hidden: int | None = setting(None, lo=1, hi=1 << 18, label="Hidden width", empty="4 × d_model",
                                  help="hidden width (empty: 4 × d_model)")
    bias: bool = setting(False, label="MLP bias", help="bias on the projections")

    def hidden_size(self, d_model: int) -> int:
        """Hidden width: hidden, or 4 × d_model when empty (GPT-2's ratio)."""
        return self.hidden or 4 * d_model


# ----------------------------------------------------------------------------- blocks


@dataclass
class EmbeddingBlock:
    """Turns token ids into vectors of size d_model."""

    type: Literal["embedding"] = "embedding"
    scale: bool = setting(False, label="Scale by √d_model", help="multiply embeddings by sqrt(d_model), as Gemma does")


@dataclass
class PositionalBlock:
    """Tells the model where each token is: added vectors (learned, sinusoidal) or inside attention (rope, alibi)."""

    type: Literal["positional"] = "positional"
    kind: Literal["learned", "sinusoidal", "rope", "alibi", "none"] = setting("rope", label="Kind",
                                                                               help="how positions are encoded")
    rope_theta: float = setting(10000.0, lo=1.0, hi=1e9, label="RoPE base", help="RoPE base frequency",
                                applies=lambda b: b.kind == "rope")
    local_rope_theta: float | None = setting(None, lo=1.0, hi=1e9, label="RoPE base (window)", empty="same as the RoPE base",
                                            help="RoPE base for sliding-window layers (Gemma 3)",
                                            applies=lambda b: b.kind == "rope")


@dataclass
class TransformerBlock:
    """Attention then MLP, each wrapped in a residual connection; `repeat` copies get their own weights."""

    type: Literal["transformer"] = "transformer"
    repeat: int = setting(1, lo=1, hi=256, label="Layers (repeat)", help="how many layers of this kind, each with its own weights")
    attention: AttentionSpec = setting(factory=AttentionSpec)
    mlp: MLPSpec = setting(factory=MLPSpec)
    norm: NormSpec = setting(factory=NormSpec)
    norm_placement: Literal["pre", "post", "sandwich", "classic_post"] = setting(
        "pre", label="Norm placement", help="pre: norm the input of attention/MLP; post: norm their output; sandwich: both; "
        "classic_post: norm after the residual add (original Transformer)"
    )
    residual: Literal["sequential", "parallel"] = setting(
        "sequential", label="Residual", help="sequential: MLP sees attention's output; parallel: both read the same input (GPT-J)"
    )
    full_attention_every: int | None = setting(
        None, lo=1, hi=256, label="Full attention every", empty="never", help="with a sliding window, every N-th layer attends to everything (Gemma 3: 6)"
    )


@dataclass
class AttentionLayerBlock:
    """One standalone attention layer with a residual connection, for free layer orders."""

    type: Literal["attention"] = "attention"
    attention: AttentionSpec = setting(factory=AttentionSpec)
    norm: NormSpec | None = setting(factory=NormSpec, help="norm before the layer (absent: no norm)")


@dataclass
class MLPLayerBlock:
    """One standalone MLP layer with a residual connection, for free layer orders."""

    type: Literal["mlp"] = "mlp"
    mlp: MLPSpec = setting(factory=MLPSpec)
    norm: NormSpec | None = setting(factory=NormSpec, help="norm before the layer (absent: no norm)")


@dataclass
class NormBlock:
    """A normalization on the residual stream between layers."""

    type: Literal["norm"] = "norm"
    norm: NormSpec = setting(factory=NormSpec)


@dataclass
class FinalNormBlock:
    """The normalization after the last layer, before the LM head."""

    type: Literal["final_norm"] = "final_norm"
    norm: NormSpec = setting(factory=NormSpec)


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

    WHAT: ClassVar[str] = "the spec"

    vocab_size: int = setting(256, lo=2, hi=1 << 20, label="Vocabulary size", help="number of tokens (follows the tokenizer)")
    d_model: int = setting(128, lo=1, hi=16384, label="Width (d_model)", help="width of the residual stream")
    max_seq_len: int = setting(256, lo=1, hi=1 << 20, label="Context length", help="longest context the model handles")
    tie_embeddings: bool = setting(True, label="Tie embedding and head", help="LM head reuses the embedding matrix")
    init_std: float = setting(0.02, lo=0.0, hi=1.0, label="Init std", help="std of the normal weight init")
    dropout: float = setting(0.0, lo=0.0, label="Dropout", help="dropout on embeddings and residual branches while training")
    blocks: list[Block] = setting(factory=list, parse=lambda data, path, problems: (True, _parse_blocks(data, path,
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
