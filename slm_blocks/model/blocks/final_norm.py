"""The final_norm block: the normalization after the last layer, before the LM head (`model.norm`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..fields import Problem, setting
from .norm import NormSpec, make_norm, norm_act, norm_problems, norm_step, norm_tensors

TYPE = "final_norm"
ROLE = "final_norm"
BRANCHES = 0


@dataclass
class Spec:
    """The normalization after the last layer, before the LM head."""

    type: Literal["final_norm"] = "final_norm"
    norm: NormSpec = setting(factory=NormSpec)


def check(block: Spec, spec, at: str) -> list[Problem]:
    return norm_problems(block.norm, at)


def plan(block: Spec) -> list:
    return []


def build(block: Spec, spec, build) -> dict:
    return {"norm": make_norm(block.norm, spec.d_model)}


def forward(body, x):
    return body.norm(x)


def step(body, decoding):
    return norm_step(body.norm)


def tensors(block: Spec, spec, first_layer: int) -> list:
    return norm_tensors("model.norm", block.norm, spec.d_model)


def costs(block: Spec, spec, acc) -> None:
    acc.act += norm_act(block.norm, spec.d_model)


def shapes(block: Spec, spec) -> list[tuple[str, str]]:
    return [("residual stream in and out", f"(B, T, {spec.d_model})")]


def describe(block: Spec, spec) -> tuple[str, str]:
    return "final_norm", block.norm.kind


def native(block: Spec, spec) -> dict:
    return {"traits": {"final_norm": block.norm},
            "names": {"gpt2": {"model.norm": ("transformer.ln_f", False)},
                      "mamba2": {"model.norm": ("backbone.norm_f", False)},
                      "lfm2": {"model.norm": ("model.embedding_norm", False)},
                      "bamba": {"model.norm": ("model.final_layernorm", False)}}}


gguf = {"names": {"model.norm": "output_norm"}, "arch_names": {"lfm2": {"model.norm": "token_embd_norm"}}}
prune = "kept whole: pruning removes layers, MLP neurons and attention heads"
