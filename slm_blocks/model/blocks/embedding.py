"""The embedding block: token ids become vectors of size d_model (`model.embed_tokens`, transformers' name), scaled
by √d_model where the spec says so (Gemma). The LM head may reuse its matrix (tied embeddings)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..fields import Problem, setting

TYPE = "embedding"
ROLE = "embedding"
BRANCHES = 0


@dataclass
class Spec:
    """Turns token ids into vectors of size d_model."""

    type: Literal["embedding"] = "embedding"
    scale: bool = setting(False, label="Scale by √d_model", help="multiply embeddings by sqrt(d_model), as Gemma does")


def check(block: Spec, spec, at: str) -> list[Problem]:
    return []


def plan(block: Spec) -> list:
    return []


def build(block: Spec, spec, build) -> dict:
    return {"embed_tokens": nn.Embedding(spec.vocab_size, spec.d_model),
            "embed_scale": math.sqrt(spec.d_model) if block.scale else None}


def forward(body, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) ids -> (B, T, C) vectors (or the caller's own vectors), scaled where the block says so."""
    x = body.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
    if body.embed_scale is not None:
        x = x * torch.tensor(body.embed_scale, dtype=x.dtype)
    return x


def step(body, decoding):
    """A 0-d token id -> its vector (C,)."""
    weight = body.embed_tokens.weight
    if body.embed_scale is None:
        return lambda token: torch.embedding(weight, token)
    scale = torch.tensor(body.embed_scale, dtype=weight.dtype)
    return lambda token: torch.embedding(weight, token) * scale


def tensors(block: Spec, spec, first_layer: int) -> list:
    return [("model.embed_tokens.weight", (spec.vocab_size, spec.d_model))]


def costs(block: Spec, spec, acc) -> None:
    acc.act += spec.d_model + acc.dropout_mask  # its output (and the embedding dropout's mask)


def shapes(block: Spec, spec) -> list[tuple[str, str]]:
    return [("token ids in", "(B, T)"), ("vectors out", f"(B, T, {spec.d_model})")]


def describe(block: Spec, spec) -> tuple[str, str]:
    return "embedding", f"{spec.vocab_size:,}×{spec.d_model}" + (", scaled by √d_model" if block.scale else "")


def native(block: Spec, spec) -> dict:
    return {"traits": {"embed_scale": block.scale},
            "names": {"gpt2": {"model.embed_tokens": ("transformer.wte", False)},
                      "mamba2": {"model.embed_tokens": ("backbone.embeddings", False)}}}


gguf = {"names": {"model.embed_tokens": "token_embd"}}
prune = "kept whole: pruning removes layers, MLP neurons and attention heads"
