"""The moe block: a mixture-of-experts feed-forward layer with a residual connection, `x + moe(norm(x))`, for free
layer orders; and the mixture itself (settings, module, one-token step), which a transformer block uses in place of
its MLP when its `experts` field is set (Mixtral, Qwen3-MoE, OLMoE).

A router (`gate`, a bias-free linear map to one logit per expert) scores every token; the top-k experts by softmax
probability each run their MLP on it (every expert is one MLP of the block's `mlp` settings, its own weights) and
the outputs are summed with those probabilities as weights, renormalised to sum to 1 when `norm_topk` is set
(Mixtral always, Qwen3-MoE optionally). An optional shared expert sees every token, scaled by a sigmoid gate
(Qwen2-MoE's). So a token pays for k experts while the layer holds all of them: the estimate counts active
parameters apart.

Left alone a router sends most tokens to a few experts. The Switch Transformer's load-balancing loss counters that:
with f_e the fraction of routing choices that went to expert e and P_e the mean router probability of e, over the
tokens of the batch (and over all MoE layers with the same experts and k, as transformers computes it),

    aux = E · Σ_e f_e · P_e        (k when perfectly balanced; larger when a few experts take most tokens)

and the training loss becomes cross-entropy + aux_loss_coef · aux. Each MoE layer leaves its router logits in the
forward's context; SLMForCausalLM adds the term (`balance_loss`) and reports `aux` on its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..assembly import affine
from ..fields import Problem, join, setting
from .mlp import MLP, MLPSpec, mlp_costs, mlp_tensors, mlp_words
from .norm import NormSpec, make_norm, norm_act, norm_problems, norm_step, norm_tensors

TYPE = "moe"
ROLE = "layer"
BRANCHES = 1


@dataclass
class MoESpec:
    """Routed experts: each token goes to the top_k of n_experts MLPs (each shaped by the `mlp` settings)."""

    WHAT: ClassVar[str] = "experts settings"
    n_experts: int = setting(4, lo=2, hi=256, label="Experts", help="how many expert MLPs, each with its own weights")
    top_k: int = setting(2, lo=1, hi=256, label="Experts per token (top-k)",
                         help="how many experts each token is sent to")
    norm_topk: bool = setting(True, label="Renormalise top-k",
                              help="scale the chosen experts' probabilities to sum to 1 (Mixtral: on)")
    shared_hidden: int | None = setting(None, lo=1, hi=1 << 18, label="Shared expert width", empty="no shared expert",
                                        help="hidden width of an expert every token also goes to (Qwen2-MoE)")
    aux_loss_coef: float = setting(0.01, lo=0.0, hi=10.0, label="Balance loss weight",
                                   help="weight of the router's load-balancing loss in the training loss")


@dataclass
class Spec:
    """One standalone mixture-of-experts layer with a residual connection, for free layer orders."""

    type: Literal["moe"] = "moe"
    experts: MoESpec = setting(factory=MoESpec)
    mlp: MLPSpec = setting(factory=lambda: MLPSpec(activation="silu", gated=True),
                           help="the shape of every expert")
    norm: NormSpec | None = setting(factory=NormSpec, help="norm before the layer (absent: no norm)")


# ----------------------------------------------------------------------------- the mixture


class SparseMoE(nn.Module):
    """router -> top-k experts -> weighted sum (+ a gated shared expert). Names follow transformers' Qwen2-MoE:
    gate, experts.{e}.{gate,up,down}_proj, shared_expert, shared_expert_gate."""

    def __init__(self, d_model: int, experts: MoESpec, mlp: MLPSpec):
        super().__init__()
        self.gate = nn.Linear(d_model, experts.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(d_model, mlp) for _ in range(experts.n_experts))
        if experts.shared_hidden:
            self.shared_expert = MLP(d_model, MLPSpec(mlp.activation, mlp.gated, experts.shared_hidden, mlp.bias))
            self.shared_expert_gate = nn.Linear(d_model, 1, bias=False)
        self.top_k, self.norm_topk, self.coef = experts.top_k, experts.norm_topk, experts.aux_loss_coef

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, expert ids), each (N, k), from router logits (N, E); softmax in fp32 like transformers."""
        probs = logits.float().softmax(-1)  # (N, E)
        weights, chosen = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.norm_topk:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights.to(logits.dtype), chosen

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        B, T, C = x.shape
        flat = x.reshape(-1, C)  # (N, C)
        logits = self.gate(flat)  # (N, E)
        if ctx is not None and ctx.router is not None:
            ctx.router.append((logits, self.top_k, self.coef))
        weights, chosen = self.route(logits)  # (N, k) each
        out = torch.zeros_like(flat)
        for e in chosen.unique().tolist():  # only the experts some token chose
            token, slot = torch.where(chosen == e)
            out.index_add_(0, token, self.experts[e](flat[token]) * weights[token, slot, None])
        if hasattr(self, "shared_expert"):
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return out.view(B, T, C)

    def step(self, decoding):
        """The same on one token's vector (C,) -> (C,): the router, then only the chosen experts' steps."""
        wr = self.gate.weight
        experts = [e.step(decoding) for e in self.experts]
        shared = self.shared_expert.step(decoding) if hasattr(self, "shared_expert") else None
        ws = self.shared_expert_gate.weight[0] if shared is not None else None
        route = self.route

        def moe(x: torch.Tensor) -> torch.Tensor:
            weights, chosen = route(affine(wr, None, x)[None])  # (1, k)
            out = sum(experts[e](x) * w for e, w in zip(chosen[0].tolist(), weights[0]))
            if shared is not None:
                out = out + torch.sigmoid(torch.dot(ws, x)) * shared(x)
            return out
        return moe

    def chosen(self, x: torch.Tensor) -> torch.Tensor:
        """The experts each token of (B, T, C) goes to, (B, T, k), for the app's per-token view."""
        return self.route(self.gate(x.reshape(-1, x.shape[-1])))[1].view(*x.shape[:-1], self.top_k)


@torch.no_grad()
def expert_choices(model, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which experts each token of `input_ids` (B, T) goes to in every mixture-of-experts layer, for a per-token view:
    {layer's module name: (B, T, k) expert ids}, from one forward (the router sees the layer's own input)."""
    seen, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, SparseMoE):
            hooks.append(module.register_forward_pre_hook(
                lambda mod, args, name=name: seen.__setitem__(name, mod.chosen(args[0]))))
    try:
        model(input_ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return seen


def ffn(module: nn.Module, ctx):
    """The feed-forward of a layer as a one-argument function of x: a mixture also leaves its router logits in the
    forward's context."""
    return partial(module, ctx=ctx) if isinstance(module, SparseMoE) else module


def balance(router: list) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(Σ coef · aux, the mean aux) over the router logits a forward collected: the term the training loss adds and
    the metric a learner watches (the module docstring's formula), each group of MoE layers with the same experts,
    k and coef concatenated as transformers' load_balancing_loss_func does; (None, None) without MoE layers."""
    groups: dict[tuple, list] = {}
    for logits, k, coef in router:
        groups.setdefault((logits.shape[-1], k, coef), []).append(logits)
    weighted, values = None, []
    for (E, k, coef), logits in groups.items():
        probs = torch.cat(logits).float().softmax(-1)  # (layers·N, E)
        f = F.one_hot(probs.topk(k, dim=-1)[1], E).sum(1).float().mean(0)  # (E,) routing choices per token
        aux = E * (f * probs.mean(0)).sum()
        values.append(aux)
        weighted = coef * aux if weighted is None else weighted + coef * aux
    return weighted, (torch.stack(values).mean() if values else None)


# ----------------------------------------------------------------------------- what a mixture adds up to


def moe_problems(experts: MoESpec, at: str) -> list[Problem]:
    if experts.top_k > experts.n_experts:
        return [Problem(join(at, "experts.top_k"), f"is {experts.top_k} but there are only {experts.n_experts} "
                        f"experts; use at most {experts.n_experts}")]
    return []


def moe_tensors(prefix: str, spec, experts: MoESpec, m: MLPSpec) -> list[tuple[str, tuple[int, ...]]]:
    out = [(f"{prefix}.gate.weight", (experts.n_experts, spec.d_model))]
    for e in range(experts.n_experts):
        out += mlp_tensors(f"{prefix}.experts.{e}", spec, m)
    if experts.shared_hidden:
        out += mlp_tensors(f"{prefix}.shared_expert", spec, _shared(experts, m))
        out.append((f"{prefix}.shared_expert_gate.weight", (1, spec.d_model)))
    return out


def _shared(experts: MoESpec, m: MLPSpec) -> MLPSpec:
    return MLPSpec(m.activation, m.gated, experts.shared_hidden, m.bias)


def moe_costs(spec, experts: MoESpec, m: MLPSpec, acc) -> None:
    """A token pays for the router and k experts (+ the shared one); the other experts' weights are inactive."""
    C, E, k = spec.d_model, experts.n_experts, experts.top_k
    acc.matmul += C * E
    for _ in range(k):
        mlp_costs(spec, m, acc)
    if experts.shared_hidden:
        mlp_costs(spec, _shared(experts, m), acc)
        acc.matmul += C
    per_expert = sum(_numel(s) for _, s in mlp_tensors("", spec, m))
    acc.inactive_params += (E - k) * per_expert
    acc.act += E + 2 * k  # router logits, probabilities of the chosen, their weights


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def moe_words(spec, experts: MoESpec, m: MLPSpec) -> str:
    shared = f" + shared {experts.shared_hidden}" if experts.shared_hidden else ""
    return f"{experts.top_k} of {experts.n_experts} experts ({mlp_words(spec, m)}){shared}"


# ----------------------------------------------------------------------------- the block's hooks


def check(block: Spec, spec, at: str) -> list[Problem]:
    return moe_problems(block.experts, at) + norm_problems(block.norm, at)


def plan(block: Spec) -> list:
    return [(None, None)]


class MoELayer(nn.Module):
    def __init__(self, d_model: int, block: Spec, dropout: float):
        super().__init__()
        self.input_layernorm = make_norm(block.norm, d_model) if block.norm else nn.Identity()
        self.mlp = SparseMoE(d_model, block.experts, block.mlp)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return forward(self, x, ctx)

    def step(self, decoding):
        return step(self, decoding)


def build(block: Spec, spec, build) -> list[nn.Module]:
    return [MoELayer(spec.d_model, block, spec.dropout)]


def forward(layer: MoELayer, x: torch.Tensor, ctx) -> torch.Tensor:
    return x + layer.drop(layer.mlp(layer.input_layernorm(x), ctx))


def step(layer: MoELayer, decoding):
    moe, norm = layer.mlp.step(decoding), norm_step(layer.input_layernorm)
    return lambda x, pos: x + moe(norm(x))


def tensors(block: Spec, spec, first_layer: int) -> list:
    p = f"model.layers.{first_layer}"
    return norm_tensors(f"{p}.input_layernorm", block.norm, spec.d_model) + \
        moe_tensors(f"{p}.mlp", spec, block.experts, block.mlp)


def costs(block: Spec, spec, acc) -> None:
    acc.act += norm_act(block.norm, spec.d_model) + acc.dropout_mask
    moe_costs(spec, block.experts, block.mlp, acc)


def shapes(block: Spec, spec) -> list[tuple[str, str]]:
    return [("residual stream in and out", f"(B, T, {spec.d_model})"),
            ("router logits", f"(B, T, {block.experts.n_experts})"),
            ("each expert's hidden", f"(tokens routed to it, {block.mlp.hidden_size(spec.d_model)})")]


def describe(block: Spec, spec) -> tuple[str, str]:
    return "moe", moe_words(spec, block.experts, block.mlp)


native = "a standalone mixture-of-experts layer has no native transformers class (a free layer order); put the " \
         "experts inside a transformer block"
gguf = "llama.cpp has no architecture with standalone mixture-of-experts layers (a free layer order)"
prune = "a mixture-of-experts layer is kept whole: pruning one expert's neurons would change what the router's " \
        "choices mean, and removing experts needs the router retrained"
