"""A toy block type for tests/model/test_plugin.py: a learned per-channel gate on the residual stream,
x + tanh(g) · x. Everything it is lives here; the test registers it and nothing else changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from slm_blocks.model.fields import Problem, join, setting

TYPE = "gate"
ROLE = "layer"
BRANCHES = 0


@dataclass
class Spec:
    """Scales the residual stream per channel by a learned gate."""

    type: Literal["gate"] = "gate"
    start: float = setting(0.0, lo=-5.0, hi=5.0, label="Gate start", help="the gate's value before training")


def check(block, spec, at):
    if block.start == 5.0:
        return [Problem(join(at, "start"), "is 5.0; tanh saturates there, use a smaller start")]
    return []


def plan(block):
    return [(None, None)]


def gated(x, gate):
    return x + torch.tanh(gate) * x


class GateLayer(nn.Module):
    def __init__(self, d_model: int, start: float):
        super().__init__()
        self.gate = nn.Parameter(torch.full((d_model,), start))

    def forward(self, x, ctx):
        return forward(self, x, ctx)

    def step(self, decoding):
        return step(self, decoding)


def build(block, spec, build):
    return [GateLayer(spec.d_model, block.start)]


def forward(layer, x, ctx):
    return gated(x, layer.gate)


def step(layer, decoding):
    return lambda x, pos: gated(x, layer.gate)


def tensors(block, spec, first_layer):
    return [(f"model.layers.{first_layer}.gate", (spec.d_model,))]


def costs(block, spec, acc):
    acc.act += spec.d_model


def shapes(block, spec):
    return [("residual stream in and out", f"(B, T, {spec.d_model})")]


def describe(block, spec):
    return "gate", f"per-channel gate starting at {block.start:g}"


native = "a gate layer has no native transformers class"
gguf = "llama.cpp has no gate layer"


def prune(block, spec=None):
    return {"droppable": True, "attention": None, "mlp": None, "shrink": lambda raw, dropped: None if dropped else raw}
