"""Prune a trained run into a smaller one: drop whole layers (depth) or MLP neurons and attention heads (width).

    result = prune_run("runs/tiny", "runs/tiny-small", target_params=400_000)    # or drop_layers=, mlp_keep=,
                                                                                  # heads_keep=
What to remove is decided by importance measured on calibration batches of the run's own training data, in
one pass with forward hooks (as in NVIDIA's Minitron, Muralidharan et al. 2024):

- a **layer** that barely changes its input matters little: importance = 1 − cos(input, output), averaged over
  tokens (ShortGPT's "block influence"); the least important layers are dropped.
- an **MLP neuron** matters as much as it is active: importance = mean squared activation entering down_proj;
  each layer keeps its own most active neurons.
- an **attention head** matters as much as its output: importance = mean squared output entering o_proj. Under
  GQA heads come in groups sharing one key/value head, so whole groups are kept or removed.

`target_params` tries every number of dropped layers and of kept head groups, sizes the MLP to reach the
target, and keeps the candidate with the lowest loss on the calibration batches. The result is a new run
whose spec describes the smaller model exactly (explicit `hidden`, `n_heads`, `n_kv_heads`, `head_dim`), so
it trains, generates and exports like any other run. It starts from the pruned weights (`init/`) and carries
the unpruned model as its teacher (`teacher/`), so training it is "healing": a short distillation.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..model.estimate import estimate, human
from ..model.blocks import hook, module_of
from ..model.spec import ModelSpec
from ..model.validate import SpecError
from ..training.schema import Problem, SettingsError

HEAL_STEPS = 200  # the pruned run's max_steps unless told otherwise
HEAL_LR_SCALE = 0.3  # healing starts a trained model again: a gentler peak than the source's (short heals at the
                     # full peak undo more than they heal; over 200 steps both end within 0.004 nats, see README)


class PruneError(SettingsError):
    """Pruning options that cannot work; every problem names its option (`drop_layers`, `heads_keep`, ...)."""

    def __init__(self, problems: list[Problem]):
        super().__init__(problems, "pruning options")


def _refuse(path: str, message: str) -> PruneError:
    return PruneError([Problem(path, message)])


@dataclass
class Plan:
    """What to remove: dropped layers (indices into the layer plan), kept query heads and MLP width per block."""

    drop: tuple[int, ...] = ()
    heads: dict[int, int] = field(default_factory=dict)  # block index -> query heads kept per layer
    hidden: dict[int, int] = field(default_factory=dict)  # block index -> MLP hidden width per layer

    def describe(self, spec: ModelSpec) -> str:
        parts, attention, mlp = [], _attention_blocks(spec), _mlp_blocks(spec)
        if self.drop:
            parts.append(f"dropped layer{'s' if len(self.drop) > 1 else ''} {', '.join(map(str, self.drop))}")
        for b, h in sorted(self.heads.items()):
            a = attention[b]
            if h != a.n_heads:
                parts.append(f"block {b}: {h} of {a.n_heads} heads")
        for b, H in sorted(self.hidden.items()):
            old = mlp[b].hidden_size(spec.d_model)
            if H != old:
                parts.append(f"block {b}: MLP {H} of {old} neurons")
        return "; ".join(parts) or "nothing pruned"


@dataclass
class PruneResult:
    out_dir: str
    plan: str  # in words
    params_before: int
    params_after: int
    val_loss_before: float
    val_loss_after: float  # right after pruning, before any healing
    layer_importance: list[float]  # 1 − cos(in, out) per layer of the unpruned model
    candidates: list[dict] = field(default_factory=list)  # target_params: every shape tried, with its loss

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- importance


def _layer_blocks(spec: ModelSpec) -> list[int]:
    """The block index of every layer of the layer plan (the model's `model.layers`)."""
    return [i for i, b in enumerate(spec.blocks) for _ in module_of(b).plan(b)]


def _prunable(spec: ModelSpec) -> dict[int, dict]:
    """Block index -> what its `prune` hook allows (droppable layers, its attention and MLP settings, how it loses
    layers); blocks that stay whole are left out."""
    return {i: part for i, part in enumerate(hook(b, "prune", spec) for b in spec.blocks) if isinstance(part, dict)}


@torch.no_grad()
def importance(model, batches: list[torch.Tensor]) -> dict:
    """One pass over calibration batches: per layer 1 − cos(in, out), per MLP the squared activation of each
    neuron, per attention the squared output of each head (sums over every token)."""
    layers = model.model.layers
    cos_sum = torch.zeros(len(layers), dtype=torch.float64)
    mlp, heads, hooks, tokens = {}, {}, [], 0

    def on_layer(i):
        def hook(module, args, output):
            x_in, x_out = args[0].float(), output.float()  # (B, T, C)
            cos_sum[i] += torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1).sum().double()
        return hook

    def on_down(i):
        def hook(module, args):
            h = args[0].float()  # (B, T, H)
            mlp[i] = mlp.get(i, 0) + h.pow(2).sum((0, 1)).double()
        return hook

    def on_o(i, attn):
        def hook(module, args):
            y = args[0].float()  # (B, T, nh*hd)
            y = y.view(*y.shape[:2], attn.n_heads, attn.head_dim)  # (B, T, nh, hd)
            heads[i] = heads.get(i, 0) + y.pow(2).sum((0, 1, 3)).double()
        return hook

    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(on_layer(i)))
        if hasattr(getattr(layer, "mlp", None), "down_proj"):  # a dense MLP (a mixture of experts stays whole)
            hooks.append(layer.mlp.down_proj.register_forward_pre_hook(on_down(i)))
        if hasattr(layer, "self_attn"):
            hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(on_o(i, layer.self_attn)))
    try:
        model.eval()
        for x in batches:
            model(input_ids=x, use_cache=False)
            tokens += x.numel()
    finally:
        for h in hooks:
            h.remove()
    return {"layer": (1 - cos_sum / tokens).tolist(), "mlp": {i: v / tokens for i, v in mlp.items()},
            "heads": {i: v / tokens for i, v in heads.items()}}


# ----------------------------------------------------------------------------- the smaller spec and weights


def pruned_spec(spec: ModelSpec, plan: Plan) -> ModelSpec:
    """The spec of the model `plan` leaves: fewer repeats, explicit MLP widths and head counts (head_dim kept)."""
    owners = _layer_blocks(spec)
    d = spec.to_dict()
    dropped_per_block = {}
    for layer in plan.drop:
        dropped_per_block[owners[layer]] = dropped_per_block.get(owners[layer], 0) + 1
    blocks, prunable = [], _prunable(spec)
    for i, (b, raw) in enumerate(zip(spec.blocks, d["blocks"])):
        if i in prunable:
            raw = prunable[i]["shrink"](raw, dropped_per_block.get(i, 0))  # None: every layer of it dropped
            if raw is None:
                continue
        if i in plan.hidden:
            raw["mlp"]["hidden"] = plan.hidden[i]
        if i in plan.heads:
            a = prunable[i]["attention"]
            groups = a.n_heads // a.kv_heads()
            raw["attention"]["head_dim"] = a.head_size(spec.d_model)
            raw["attention"]["n_heads"] = plan.heads[i]
            raw["attention"]["n_kv_heads"] = None if a.n_kv_heads is None else plan.heads[i] // groups
        blocks.append(raw)
    d["blocks"] = blocks
    return ModelSpec.from_dict(d)


def _rows(t: torch.Tensor, idx: torch.Tensor, size: int) -> torch.Tensor:
    """Rows of `t` in chunks of `size`: chunk k of the result is chunk idx[k] of t (heads of a projection)."""
    return t.view(-1, size, *t.shape[1:])[idx].reshape(-1, *t.shape[1:]).contiguous()


def pruned_state(model, spec: ModelSpec, plan: Plan, scores: dict) -> dict[str, torch.Tensor]:
    """The weights of the pruned model: kept layers renumbered, MLP neurons and head groups sliced by importance
    (kept in their original order, so pruning nothing gives the same weights)."""
    owners = _layer_blocks(spec)
    plan_layers = spec.layer_plan()
    keep_layers = [i for i in range(len(owners)) if i not in set(plan.drop)]
    new_index = {old: new for new, old in enumerate(keep_layers)}
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and spec.tie_embeddings:
            continue
        if not name.startswith("model.layers."):
            out[name] = t.clone()
            continue
        _, _, idx, rest = name.split(".", 3)
        old = int(idx)
        if old not in new_index:
            continue
        b = owners[old]
        t = t.clone()
        if b in plan.hidden and rest.startswith("mlp."):
            H = plan.hidden[b]
            keep = torch.sort(torch.topk(scores["mlp"][old], H).indices).values
            if rest.startswith(("mlp.gate_proj.", "mlp.up_proj.")):
                t = t[keep].contiguous()
            elif rest == "mlp.down_proj.weight":
                t = t[:, keep].contiguous()
        if b in plan.heads and rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj",
                                                                                        "o_proj"):
            a = plan_layers[old][1]
            hd, nh = a.head_size(spec.d_model), a.n_heads
            per_group = nh // a.kv_heads()
            group_score = scores["heads"][old].view(-1, per_group).sum(-1)  # (n_kv,)
            groups = torch.sort(torch.topk(group_score, plan.heads[b] // per_group).indices).values
            q_heads = (groups[:, None] * per_group + torch.arange(per_group)).flatten()
            proj = rest.split(".")[1]
            if proj == "q_proj":
                t = _rows(t, q_heads, hd)
            elif proj in ("k_proj", "v_proj"):
                t = _rows(t, groups, hd)
            elif rest == "self_attn.o_proj.weight":
                t = _rows(t.T, q_heads, hd).T.contiguous()  # columns of o_proj, head by head
        out[f"model.layers.{new_index[old]}.{rest}"] = t
    return out


def build_pruned(model, spec: ModelSpec, plan: Plan, scores: dict, ids: dict):
    """(smaller spec, its model with the pruned weights loaded strictly)."""
    from ..model.modeling import build_model

    small = pruned_spec(spec, plan)
    state = pruned_state(model, spec, plan, scores)
    with torch.random.fork_rng(devices=[]):
        pruned = build_model(small, **ids)
    missing, unexpected = pruned.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and small.tie_embeddings)]
    if missing or unexpected:  # a bug here, never the user's
        raise RuntimeError(f"pruned weights do not fit the pruned spec: missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}")
    pruned.tie_weights()
    return small, pruned.eval(), state


# ----------------------------------------------------------------------------- checking the options


def _attention_blocks(spec: ModelSpec) -> dict[int, object]:
    return {i: p["attention"] for i, p in _prunable(spec).items() if p["attention"] is not None}


def _mlp_blocks(spec: ModelSpec) -> dict[int, object]:
    return {i: p["mlp"] for i, p in _prunable(spec).items() if p["mlp"] is not None}


def droppable(spec: ModelSpec) -> list[int]:
    """Layers that can be dropped: not norm layers, and not layers of a block that alternates sliding and full
    attention (dropping one would shift which of the later layers slide)."""
    prunable = _prunable(spec)
    return [i for i, b in enumerate(_layer_blocks(spec)) if b in prunable and prunable[b]["droppable"]]


def _kept_whole(spec: ModelSpec) -> str:
    """The layer blocks whose `prune` hook keeps them whole, with their reasons ("" when none)."""
    reasons = [f"block {i}: {why}" for i, b in enumerate(spec.blocks) if module_of(b).plan(b)
               for why in [hook(b, "prune", spec)] if isinstance(why, str)]
    return "; " + "; ".join(reasons) if reasons else ""


def check_options(spec: ModelSpec, drop_layers: int, mlp_keep: float, heads_keep: int | None) -> list[Problem]:
    """Every problem of explicit pruning options, each naming its option."""
    problems = []
    n_layers = len(_layer_blocks(spec))
    can_drop = droppable(spec)
    if drop_layers < 0:
        problems.append(Problem("drop_layers", f"is {drop_layers}; use 0 or more"))
    elif drop_layers >= n_layers:
        problems.append(Problem("drop_layers", f"is {drop_layers}, but the model has {n_layers} layer"
                                f"{'s' if n_layers > 1 else ''} and must keep at least one; use at most "
                                f"{n_layers - 1}"))
    elif drop_layers > len(can_drop):
        problems.append(Problem("drop_layers", f"is {drop_layers}, but only {len(can_drop)} of the {n_layers} layers "
                                "can be dropped (norm layers, and layers of a block that alternates sliding and full "
                                "attention, stay: dropping one would shift that pattern" + _kept_whole(spec) +
                                "); prune width instead (mlp_keep, heads_keep)"))
    if not (0 < mlp_keep <= 1):
        problems.append(Problem("mlp_keep", f"is {mlp_keep:g}; use a share of the MLP neurons in (0, 1], e.g. 0.5"))
    else:
        for b, m in _mlp_blocks(spec).items():
            if round(mlp_keep * m.hidden_size(spec.d_model)) < 1:
                problems.append(Problem("mlp_keep", f"is {mlp_keep:g}: block {b} would keep no neuron of its "
                                        f"{m.hidden_size(spec.d_model)}; keep at least one"))
                break
    if heads_keep is not None:
        if spec.positional() == "alibi":
            problems.append(Problem("heads_keep", "ALiBi's slopes depend on the number of heads, so removing heads "
                                    "would change the ones that stay; prune layers or MLP neurons instead"))
        for b, a in _attention_blocks(spec).items():
            per_group = a.n_heads // a.kv_heads()
            if heads_keep < 1:
                problems.append(Problem("heads_keep", f"is {heads_keep}; every attention layer must keep at least "
                                        + (f"one key/value group ({per_group} heads)" if per_group > 1 else
                                           "one head")))
                break
            if heads_keep > a.n_heads:
                problems.append(Problem("heads_keep", f"is {heads_keep}, but block {b} has only {a.n_heads} heads; "
                                        f"use at most {a.n_heads}"))
                break
            if heads_keep % per_group:
                problems.append(Problem("heads_keep", f"is {heads_keep}, but block {b} groups its {a.n_heads} "
                                        f"query heads in {a.n_kv_heads} key/value groups of {per_group} (GQA): keep "
                                        f"whole groups, a multiple of {per_group}"))
                break
    return problems


def explicit_plan(spec: ModelSpec, scores: dict, drop_layers: int, mlp_keep: float, heads_keep: int | None) -> Plan:
    can_drop = droppable(spec)
    ranked = sorted(can_drop, key=lambda i: scores["layer"][i])[:drop_layers]
    hidden = {b: max(1, round(mlp_keep * m.hidden_size(spec.d_model))) for b, m in _mlp_blocks(spec).items()}
    heads = {b: heads_keep for b in _attention_blocks(spec)} if heads_keep is not None else {}
    return Plan(tuple(sorted(ranked)), heads, hidden)


# ----------------------------------------------------------------------------- reaching a parameter target


def _head_options(spec: ModelSpec, limit: int = 4) -> list[dict[int, int]]:
    """Kept heads per block for a few shares of the key/value groups (all groups first)."""
    attn = _attention_blocks(spec)
    if not attn or spec.positional() == "alibi":
        return [{}]
    most = max(a.kv_heads() for a in attn.values())
    shares = sorted({k / most for k in range(1, most + 1)}, reverse=True)
    if len(shares) > limit:
        shares = [shares[round(i * (len(shares) - 1) / (limit - 1))] for i in range(limit)]
    out = []
    for s in shares:
        opt = {}
        for b, a in attn.items():
            groups = a.kv_heads()
            opt[b] = max(1, round(s * groups)) * (a.n_heads // groups)
        if opt not in out:
            out.append(opt)
    return out


def _fit_mlp(spec: ModelSpec, drop: tuple, heads: dict, target: int) -> Plan | None:
    """The widest MLP (one share for every block) that brings the model to at most `target` parameters."""
    mlps = _mlp_blocks(spec)

    def plan_at(share: float) -> Plan:
        return Plan(drop, heads, {b: max(1, round(share * m.hidden_size(spec.d_model))) for b, m in mlps.items()})

    def params(p: Plan) -> int:
        return estimate(pruned_spec(spec, p)).params

    if params(plan_at(1.0)) <= target:
        return plan_at(1.0)
    lo, hi = 0.0, 1.0
    if params(plan_at(1e-9)) > target:
        return None
    for _ in range(30):
        mid = (lo + hi) / 2
        if params(plan_at(mid)) <= target:
            lo = mid
        else:
            hi = mid
    return plan_at(lo)


def _calib_loss(model, batches) -> float:
    import torch.nn.functional as F

    with torch.no_grad():
        losses = []
        for x in batches:
            logits = model(input_ids=x[:, :-1], use_cache=False).logits
            losses.append(float(F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())))
    return sum(losses) / len(losses)


def target_plan(model, spec: ModelSpec, scores: dict, target: int, batches, ids: dict, max_drop: int = 6):
    """(best plan, every candidate tried) for a parameter target; see the module docstring."""
    can_drop = droppable(spec)
    ranked = sorted(can_drop, key=lambda i: scores["layer"][i])
    n_layers = len(_layer_blocks(spec))
    candidates = []
    for k in range(0, min(len(ranked), n_layers - 1, max_drop) + 1):
        drop = tuple(sorted(ranked[:k]))
        for heads in _head_options(spec):
            plan = _fit_mlp(spec, drop, heads, target)
            if plan is None:
                continue
            try:
                small, pruned, _ = build_pruned(model, spec, plan, scores, ids)
            except SpecError:
                continue
            candidates.append({"plan": plan, "params": estimate(small).params, "loss": _calib_loss(pruned, batches),
                               "shape": plan.describe(spec)})
    if not candidates:
        return None, []
    near = [c for c in candidates if c["params"] >= 0.9 * target]  # shapes far below the target are not rivals
    best = min(near or candidates, key=lambda c: c["loss"])
    return best["plan"], [{k: v for k, v in c.items() if k != "plan"} for c in candidates]


# ----------------------------------------------------------------------------- a pruned run


def _calibration(run, n_batches: int, batch_size: int) -> list[torch.Tensor]:
    """Fixed windows of the run's training text, seq_len + 1 tokens each (the same ones every time)."""
    gen = torch.Generator().manual_seed(run.train_config.seed + 11)
    T = run.seq_len
    data = run.train_tokens
    out = []
    for _ in range(n_batches):
        ix = torch.randint(len(data) - T - 1, (batch_size,), generator=gen)
        out.append(data[ix[:, None] + torch.arange(T + 1)])  # (B, T+1)
    return out


def prune_run(run_dir: str | Path, out_dir: str | Path, *, target_params: int | None = None, drop_layers: int = 0,
              mlp_keep: float = 1.0, heads_keep: int | None = None, heal_steps: int = HEAL_STEPS,
              heal_max_time: float | None = None, alpha: float = 0.5, temperature: float = 2.0,
              calib_batches: int = 8, status=None) -> PruneResult:
    """Make `out_dir`, a new run holding the pruned model (see the module docstring). PruneError names the
    option for anything refused; nothing is written then, and the source run is only read."""
    from ..training.loop import evaluate
    from ..training.run import open_run

    say = status or (lambda text: None)
    src, out = Path(run_dir), Path(out_dir)
    if out.exists():
        raise _refuse("out", f"{out.name} already exists; choose a new name for the pruned run")
    if target_params is not None and (drop_layers or mlp_keep != 1.0 or heads_keep is not None):
        raise _refuse("target_params", "give either a parameter target or drop_layers / mlp_keep / heads_keep, "
                      "not both")
    if not 1 <= heal_steps <= 10**7:
        raise _refuse("heal_steps", f"is {heal_steps}; use at least 1 (the healing run's steps)")
    for name, value, lo, hi in (("alpha", alpha, 0, 1), ("temperature", temperature, 1e-6, 100)):
        if not lo <= value <= hi:
            raise _refuse(name, f"is {value:g}; use a value in [{lo:g}, {hi:g}]")
    from ..training.checkpoint import latest_checkpoint

    if not (src / "run.json").is_file():
        raise _refuse("run", f"{src.name} is not a run folder (run.json is missing)")
    if latest_checkpoint(src) is None:
        raise _refuse("run", f"run {src.name} has no checkpoint yet; train it before pruning it")
    spec = open_run(src, load_data=False).spec
    before = estimate(spec).params
    if target_params is None:
        problems = check_options(spec, drop_layers, mlp_keep, heads_keep)
        if problems:
            raise PruneError(problems)
        if not drop_layers and mlp_keep == 1.0 and heads_keep is None:
            raise _refuse("target_params", "nothing to prune: give a parameter target or drop_layers, mlp_keep or "
                          "heads_keep")
    elif not 1 <= target_params < before:
        raise _refuse("target_params", f"is {target_params:,}; the model has {before:,} parameters: aim below that")
    say(f"loading {src.name} and its data")
    run = open_run(src)
    model = run.load_model()
    ids = run.token_ids()
    say("measuring importance on calibration batches")
    batches = _calibration(run, calib_batches, run.train_config.batch_size)
    scores = importance(model, [b[:, :-1] for b in batches])
    candidates = []
    if target_params is not None:
        say("trying shapes that reach the target")
        plan, candidates = target_plan(model, spec, scores, target_params, batches[:2], ids)
        if plan is None:
            floor = estimate(pruned_spec(spec, Plan(tuple(droppable(spec)[:len(_layer_blocks(spec)) - 1]), {}, {
                b: 1 for b in _mlp_blocks(spec)}))).params
            raise _refuse("target_params", f"is {target_params:,}; even the smallest shape pruning can make has "
                          f"about {human(floor)} parameters (the embeddings stay whole): aim higher")
    else:
        plan = explicit_plan(spec, scores, drop_layers, mlp_keep, heads_keep)
    small, pruned, state = build_pruned(model, spec, plan, scores, ids)
    say("measuring the held-out loss before and after")
    device = torch.device("cpu")
    loss_before = evaluate(model, run, device).val_loss
    loss_after = evaluate(pruned, run, device).val_loss
    result = PruneResult(str(out), plan.describe(spec), before, estimate(small).params, loss_before, loss_after,
                         [round(x, 6) for x in scores["layer"]], candidates)
    say(f"writing {out.name}")
    _write_run(run, out, small, state, model, spec, plan, result, heal_steps, heal_max_time, alpha, temperature)
    return result


def _write_run(run, out: Path, small: ModelSpec, state: dict, teacher_model, teacher_spec: ModelSpec, plan: Plan,
               result: PruneResult, heal_steps: int, heal_max_time: float | None, alpha: float,
               temperature: float) -> None:
    """The pruned run: the source's data and tokenizer, the smaller spec, the pruned weights to start from, the
    unpruned model as teacher, and training settings for a short healing run."""
    from ..training.config import TrainConfig
    from ..training.distill import save_teacher
    from ..training.run import prepare_run, save_init_weights

    cfg = run.train_config.to_dict()
    cfg.update(max_steps=heal_steps, max_time=heal_max_time, lr=run.train_config.peak_lr() * HEAL_LR_SCALE,
               warmup_steps=None, eval_every=None, checkpoint_every=None, log_every=None)
    try:
        new = prepare_run(out, small, run.data_config, run.tokenizer_config, TrainConfig.from_dict(cfg),
                          tokenizer_obj=run.tokenizer)
        save_init_weights(out, state)
        teacher_state = {k: v for k, v in teacher_model.state_dict().items()
                         if not (k == "lm_head.weight" and teacher_spec.tie_embeddings)}
        record = {"source": run.dir.name, "kind": "run", "params": result.params_before,
                  "architecture": teacher_spec.summary(), "alpha": alpha, "temperature": temperature}
        save_teacher(out, teacher_spec, teacher_state, run.token_ids(), record)
        new.meta.update(teacher=record, init_from={"source": run.dir.name, "kind": "pruned", "params": result.params_after,
                                                   "architecture": small.summary()},
                        pruned_from={**{k: v for k, v in result.to_dict().items() if k != "out_dir"}})
        new.save()
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # a half-written run must not look like a run
        raise

