"""The lm_head block: the final vectors become one score (logit) per vocabulary token (`lm_head`, on the causal-LM
model rather than its body, as in transformers). Tied embeddings reuse the embedding matrix: no new weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..fields import Problem

TYPE = "lm_head"
ROLE = "lm_head"
BRANCHES = 0


@dataclass
class Spec:
    """Turns the final vectors into one score (logit) per vocabulary token."""

    type: Literal["lm_head"] = "lm_head"


def check(block: Spec, spec, at: str) -> list[Problem]:
    return []


def plan(block: Spec) -> list:
    return []


def build(block: Spec, spec, build) -> nn.Module:
    return nn.Linear(spec.d_model, spec.vocab_size, bias=False)  # tied: post_init shares the embedding's weight


def forward(head: nn.Module, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, V)
    return head(x)


def step(head: nn.Module, decoding):
    weight = head.weight  # (V, C)
    return lambda x: torch.mv(weight, x)  # (C,) -> (V,)


def tensors(block: Spec, spec, first_layer: int) -> list:
    return [] if spec.tie_embeddings else [("lm_head.weight", (spec.vocab_size, spec.d_model))]


def costs(block: Spec, spec, acc) -> None:
    acc.matmul += spec.vocab_size * spec.d_model  # it multiplies even when tied
    acc.act += spec.d_model + 4 * spec.vocab_size  # its input; logits, log-softmax and the two gradients


def shapes(block: Spec, spec) -> list[tuple[str, str]]:
    return [("vectors in", f"(B, T, {spec.d_model})"), ("next-token scores out", f"(B, T, {spec.vocab_size})")]


def describe(block: Spec, spec) -> tuple[str, str]:
    if spec.tie_embeddings:
        return "lm_head", f"tied: reuses the embedding matrix ({spec.vocab_size}×{spec.d_model}), no new parameters"
    return "lm_head", f"its own {spec.vocab_size}×{spec.d_model} matrix"


native = {"traits": {}, "names": {"gpt2": {"lm_head": ("lm_head", False)}}}
gguf = {"names": {"lm_head": "output"}}
prune = "kept whole: pruning removes layers, MLP neurons and attention heads"
