"""The transformer block: attention then MLP, each added back to the residual stream, `repeat` layers each with its
own weights; norms sit where `norm_placement` puts them. With `experts` set, the MLP is a mixture of experts
(blocks/moe.py: Mixtral, Qwen3-MoE), each expert shaped by the `mlp` settings.

The layer is one straight body with six named norm slots (litgpt's layout): the input and output of attention
and of the MLP, and after each residual add. A placement is only which slots hold a norm; an empty slot passes
its value through. The usual pre-norm layer (GPT-2, Llama, nanoGPT's Block) fills the two input slots:

    x = x + attn(input_layernorm(x))
    x = x + mlp(post_attention_layernorm(x))

The norms keep transformers' module names, so export is a rename-free copy: Llama's for pre-norm, Gemma 3's for
sandwich, OLMo 2's for post-norm. The same body runs the forward (B, T, C) and the one-token step (C,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..assembly import unchanged
from ..fields import Problem, join, setting
from .attention import (
    Attention, AttentionContext, AttentionSpec, attention_costs, attention_problems, attention_shapes,
    attention_tensors, attention_words,
)
from .mlp import MLP, MLPSpec, mlp_costs, mlp_tensors, mlp_words
from .moe import MoESpec, SparseMoE, ffn, moe_costs, moe_problems, moe_tensors, moe_words
from .norm import NormSpec, make_norm, norm_act, norm_problems, norm_step, norm_tensors

TYPE = "transformer"
ROLE = "layer"
BRANCHES = 2

SLOTS = ("attn_in", "attn_out", "attn_add", "mlp_in", "mlp_out", "mlp_add")
# norm_placement -> the module name in each slot of SLOTS (None: the slot is empty)
NORM_SLOTS = {
    "pre": ("input_layernorm", None, None, "post_attention_layernorm", None, None),
    "post": (None, "post_attention_layernorm", None, None, "post_feedforward_layernorm", None),
    "sandwich": ("input_layernorm", "post_attention_layernorm", None, "pre_feedforward_layernorm",
                 "post_feedforward_layernorm", None),
    "classic_post": (None, None, "post_attention_layernorm", None, None, "post_feedforward_layernorm"),
}


@dataclass
class Spec:
    """Attention then MLP, each wrapped in a residual connection; `repeat` copies get their own weights."""

    type: Literal["transformer"] = "transformer"
    repeat: int = setting(1, lo=1, hi=256, label="Layers (repeat)",
                          help="how many layers of this kind, each with its own weights")
    attention: AttentionSpec = setting(factory=AttentionSpec)
    mlp: MLPSpec = setting(factory=MLPSpec)
    norm: NormSpec = setting(factory=NormSpec)
    experts: MoESpec | None = setting(None, label="Experts", empty="one dense MLP",
                                      help="a mixture of experts in place of the MLP, each expert shaped by the MLP "
                                      "settings (Mixtral, Qwen3-MoE)")
    norm_placement: Literal["pre", "post", "sandwich", "classic_post"] = setting(
        "pre", label="Norm placement", help="pre: norm the input of attention/MLP; post: norm their output; sandwich: "
        "both; classic_post: norm after the residual add (original Transformer)"
    )
    residual: Literal["sequential", "parallel"] = setting(
        "sequential", label="Residual",
        help="sequential: MLP sees attention's output; parallel: both read the same input (GPT-J)"
    )
    full_attention_every: int | None = setting(
        None, lo=1, hi=256, label="Full attention every", empty="never",
        help="with a sliding window, every N-th layer attends to everything (Gemma 3: 6)"
    )

    def window(self, r: int) -> int | None:
        """The sliding window of repeat r (0-based): every full_attention_every-th layer attends to everything."""
        full = self.full_attention_every is not None and (r + 1) % self.full_attention_every == 0
        return None if full else self.attention.sliding_window


# ----------------------------------------------------------------------------- the layer


def body(x, ctx, attn, mlp, norms, drop, parallel: bool):
    """One transformer layer on x: (B, T, C) with the forward's ctx, or one token's (C,) with its position."""
    attn_in, attn_out, attn_add, mlp_in, mlp_out, mlp_add = norms
    a = attn_out(attn(attn_in(x), ctx))
    if parallel:  # GPT-J / NeoX: attention and MLP both read the same x
        return x + drop(a + mlp_out(mlp(mlp_in(x))))
    x = attn_add(x + drop(a))
    return mlp_add(x + drop(mlp_out(mlp(mlp_in(x)))))


class TransformerLayer(nn.Module):
    def __init__(self, d_model: int, block: Spec, attn: Attention, dropout: float):
        super().__init__()
        self.self_attn = attn
        self.mlp = SparseMoE(d_model, block.experts, block.mlp) if block.experts else MLP(d_model, block.mlp)
        for name in norm_names(block):
            self.add_module(name, make_norm(block.norm, d_model))
        self.slots = NORM_SLOTS[block.norm_placement]
        self.parallel = block.residual == "parallel"
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def norms(self, as_step: bool = False) -> list:
        """The six slots' norms in SLOTS order (a norm's own forward for the step), empty ones pass through."""
        return [unchanged if name is None else norm_step(getattr(self, name)) if as_step else getattr(self, name)
                for name in self.slots]

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return forward(self, x, ctx)

    def step(self, decoding):
        return step(self, decoding)


def norm_names(block: Spec) -> list[str]:
    """The norm modules a placement fills (each slot has its own module; NORM_SLOTS lists them in module order)."""
    return [name for name in NORM_SLOTS[block.norm_placement] if name]


# ----------------------------------------------------------------------------- the block's hooks


def check(block: Spec, spec, at: str) -> list[Problem]:
    problems = attention_problems(spec, block.attention, at)
    if block.norm_placement == "classic_post" and block.residual == "parallel":
        problems.append(Problem(join(at, "residual"), "'parallel' cannot be combined with norm_placement "
                                "'classic_post'; use 'sequential' or another norm placement"))
    if block.full_attention_every is not None and block.attention.sliding_window is None:
        problems.append(Problem(join(at, "full_attention_every"), "only matters with attention.sliding_window; set "
                                "a window or leave it empty"))
    if block.experts is not None:
        problems += moe_problems(block.experts, at)
    return problems + norm_problems(block.norm, at)


def plan(block: Spec) -> list:
    return [(block.attention, block.window(r)) for r in range(block.repeat)]


def build(block: Spec, spec, build) -> list[nn.Module]:
    layers = []
    for r in range(block.repeat):
        attn = Attention.built(spec.d_model, block.attention, block.norm, block.window(r), build)
        layers.append(TransformerLayer(spec.d_model, block, attn, spec.dropout))
    return layers


def forward(layer: TransformerLayer, x: torch.Tensor, ctx) -> torch.Tensor:
    return body(x, ctx, layer.self_attn, ffn(layer.mlp, ctx), layer.norms(), layer.drop, layer.parallel)


def step(layer: TransformerLayer, decoding):
    attn, mlp, norms, parallel = layer.self_attn.step(decoding), layer.mlp.step(decoding), layer.norms(True), \
        layer.parallel
    return lambda x, pos: body(x, pos, attn, mlp, norms, unchanged, parallel)


def tensors(block: Spec, spec, first_layer: int) -> list:
    out = []
    names = norm_names(block)
    for r in range(block.repeat):
        p = f"model.layers.{first_layer + r}"
        out += attention_tensors(f"{p}.self_attn", spec, block.attention) + (
            moe_tensors(f"{p}.mlp", spec, block.experts, block.mlp) if block.experts
            else mlp_tensors(f"{p}.mlp", spec, block.mlp))
        out += [t for name in names for t in norm_tensors(f"{p}.{name}", block.norm, spec.d_model)]
    return out


def costs(block: Spec, spec, acc) -> None:
    n_norms = len(norm_names(block))
    for r in range(block.repeat):
        acc.act += n_norms * norm_act(block.norm, spec.d_model) + 2 * acc.dropout_mask
        attention_costs(spec, block.attention, block.window(r), acc)
        if block.experts:
            moe_costs(spec, block.experts, block.mlp, acc)
        else:
            mlp_costs(spec, block.mlp, acc)


def shapes(block: Spec, spec) -> list[tuple[str, str]]:
    return [("residual stream in and out", f"(B, T, {spec.d_model})")] + attention_shapes(spec, block.attention) + \
        ([("router logits", f"(B, T, {block.experts.n_experts})"),
          ("each expert's hidden", f"(tokens routed to it, {block.mlp.hidden_size(spec.d_model)})")]
         if block.experts else [("MLP hidden", f"(B, T, {block.mlp.hidden_size(spec.d_model)})")])


def describe(block: Spec, spec) -> tuple[str, str]:
    name = f"transformer×{block.repeat}" if block.repeat > 1 else "transformer"
    parallel = ", parallel residual" if block.residual == "parallel" else ""
    ffn_words = moe_words(spec, block.experts, block.mlp) if block.experts else mlp_words(spec, block.mlp)
    return name, f"{attention_words(spec, block.attention)}, {ffn_words}, " \
                 f"{block.norm_placement}-{block.norm.kind}{parallel}"


# ----------------------------------------------------------------------------- export and pruning


def settings(block: Spec) -> tuple:
    """What must be equal across layers for one native class to hold them all."""
    return (block.attention, block.mlp, block.norm, block.norm_placement, block.residual, block.full_attention_every,
            block.experts)


def native(block: Spec, spec) -> dict:
    """Its layers' settings for the family rules (sharing/native.py), and GPT-2's names inside a layer (q, k and v
    are fused into GPT-2's c_attn there); Llama, Mistral, Qwen3 and Gemma 3 use our names as they are."""
    return {"layers": [block] * block.repeat,
            "layer_names": {"gpt2": {"self_attn.o_proj": ("attn.c_proj", True), "mlp.up_proj": ("mlp.c_fc", True),
                               "mlp.down_proj": ("mlp.c_proj", True), "input_layernorm": ("ln_1", False),
                               "post_attention_layernorm": ("ln_2", False)},
                            "lfm2": LFM2_NAMES, "bamba": BAMBA_NAMES}}


# names inside a layer of the hybrid families (sharing/native.py renames module prefixes): ours -> theirs
LFM2_NAMES = {"input_layernorm": ("operator_norm", False), "post_attention_layernorm": ("ffn_norm", False),
              "self_attn.o_proj": ("self_attn.out_proj", False), "self_attn.q_norm": ("self_attn.q_layernorm", False),
              "self_attn.k_norm": ("self_attn.k_layernorm", False), "mlp.gate_proj": ("feed_forward.w1", False),
              "mlp.up_proj": ("feed_forward.w3", False), "mlp.down_proj": ("feed_forward.w2", False)}
BAMBA_NAMES = {"post_attention_layernorm": ("pre_ff_layernorm", False), "mlp": ("feed_forward", False)}


def gguf(block: Spec, spec) -> dict:
    """GGUF names inside `blk.{i}.` for our names inside `model.layers.{i}.`; Gemma 3 names its sandwich norms."""
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "mlp.gate": "ffn_gate_inp", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    gemma3 = {**names, "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
              "post_feedforward_layernorm": "post_ffw_norm"}
    return {"layer_names": {"*": names, "gemma3": gemma3}, "layers": block.repeat}


def prune(block: Spec, spec=None) -> dict | str:
    """Its layers can be dropped (fewer repeats) unless it alternates sliding and full attention: dropping one
    would shift which of the later layers slide. A block of experts stays whole (see blocks/moe.py's prune)."""
    if block.experts is not None:
        return "a transformer block with experts is kept whole: pruning an expert's neurons would change what the " \
               "router's choices mean"
    return {"droppable": not (block.full_attention_every and block.attention.sliding_window),
            "attention": block.attention, "mlp": block.mlp, "shrink": _shrink}


def _shrink(raw: dict, dropped: int) -> dict | None:
    raw["repeat"] = raw["repeat"] - dropped
    return raw if raw["repeat"] else None
