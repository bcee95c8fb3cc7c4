"""What the Build tab shows and does to a spec, as pure functions of it (the tab's layout and wiring: tabs/build.py).

The spec is a JSON dict (each block carries a stable `_id` so `gr.render` keeps rows attached to their block
when the list is reordered). All knowledge of what a block can hold comes from the engine's block modules and
their field metadata; this module only turns those fields into widgets, problems into lines, and edits into new
dicts. An edit that makes the spec differ from the preset it was named after renames it "custom (from llama)".
"""

from __future__ import annotations

import copy
import html
import json
import re
import typing
import uuid

import gradio as gr

from .. import BLOCK_TYPES, ModelSpec, SpecError, estimate, list_presets, load_preset
from ..model.estimate import block_costs, human, numel
from ..model.blocks import layer_types, module_of
from ..model.fields import leaf_fields, parse_record, unwrap_optional
from ..model.spec import MAX_SPEC_BYTES
from ..training.config import TrainConfig
from ..training.schema import parse_number
from .widgets import field_widget

GLOBALS = ("vocab_size", "d_model", "max_seq_len", "tie_embeddings", "init_std", "dropout")


# ----------------------------------------------------------------------------- spec dict helpers


def with_ids(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    for b in spec.get("blocks", []):
        if isinstance(b, dict):
            b.setdefault("_id", uuid.uuid4().hex[:8])
    return spec


def clean(spec: dict) -> dict:
    """The spec without UI bookkeeping (`_id`)."""
    spec = copy.deepcopy(spec)
    spec["blocks"] = [{k: v for k, v in b.items() if k != "_id"} if isinstance(b, dict) else b
                      for b in spec.get("blocks", [])]
    return spec


def preset_state(name: str) -> dict:
    return with_ids(load_preset(name).to_dict())


def _as_json(block_type: str) -> dict:
    from dataclasses import asdict

    return asdict(BLOCK_TYPES[block_type]())


def check(spec: dict) -> tuple[ModelSpec | None, list]:
    try:
        return ModelSpec.from_dict(clean(spec)), []
    except SpecError as e:
        return None, e.problems


# ----------------------------------------------------------------------------- widgets per field


def field_widgets(block_type: str) -> list[tuple[str, typing.Any, dict]]:
    """(dotted path, type hint, metadata) for every editable field of a block type, sub-specs flattened."""
    return leaf_fields(BLOCK_TYPES[block_type])


def get_path(d: dict, path: str):
    for part in path.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def set_path(d: dict, path: str, value) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        if not isinstance(d.get(part), dict):
            d[part] = {}
        d = d[part]
    d[parts[-1]] = value


def optional_number(hint) -> type | None:
    """int or float for an Optional[int | float] field (edited as text, empty = None), else None."""
    args = typing.get_args(hint)
    base = [a for a in args if a is not type(None)]
    return base[0] if type(None) in args and len(base) == 1 and base[0] in (int, float) else None


def parse_optional_number(text, kind: type):
    """'' -> None, '12' -> 12; anything else is returned as typed so validation names the field."""
    ok, value, _ = parse_number(text, kind, optional=True)
    return value if ok else text


def field_label(path: str) -> str:
    """The label a learner sees for a spec field (its metadata's label; the browser tests find fields by it)."""
    meta = _known_fields().get(path) or {}
    return meta.get("label") or path.rsplit(".", 1)[-1].replace("_", " ").capitalize()


def field_groups(block_type: str, block: dict | None = None) -> list[tuple[str, list]]:
    """field_widgets grouped by sub-spec ("" = the block's own fields), in declaration order; with `block`, only
    the fields that apply to its other choices (no RoPE base under ALiBi)."""
    shown = moot_fields(block) if block is not None else set()
    groups: dict[str, list] = {}
    for path, hint, meta in field_widgets(block_type):
        if path not in shown:
            groups.setdefault(path.split(".")[0] if "." in path else "", []).append((path, hint, meta))
    return list(groups.items())


def moot_fields(block: dict) -> set[str]:
    """The fields of a block (a dict, possibly mid-edit) whose `applies` metadata says its other choices make
    them moot, e.g. the RoPE bases of a positional block that is not RoPE."""
    btype = block.get("type") if isinstance(block, dict) else None
    if btype not in BLOCK_TYPES:
        return set()
    try:
        record = parse_record(BLOCK_TYPES[btype], {k: v for k, v in block.items() if k != "_id"}, "", [], text=False)
    except Exception:  # noqa: BLE001 - a block mid-edit: show every field rather than none
        return set()
    moot = set()
    for path, _hint, meta in field_widgets(btype):
        owner = record
        for part in path.split(".")[:-1]:
            owner = getattr(owner, part, None)
        applies = meta.get("applies")
        if applies is not None and owner is not None and not applies(owner):
            moot.add(path)
    return moot


def make_widget(path: str, hint, meta: dict, value, key: str):
    """One input for one spec field (ui/widgets.py), labelled as the field's metadata says."""
    return field_widget(hint, meta, value, label=field_label(path), key=key, boxed=True)


# ----------------------------------------------------------------------------- views


COLORS = {"embedding": "#c7d2fe", "positional": "#ddd6fe", "transformer": "#bbf7d0", "attention": "#fde68a",
          "mlp": "#fecaca", "norm": "#e5e7eb", "final_norm": "#e5e7eb", "lm_head": "#bae6fd", "moe": "#fdba74",
          "mamba2": "#a5f3fc", "short_conv": "#f5d0fe"}


def diagram(spec: dict, problems=(), selected: str | None = None) -> str:
    """An HTML stack of the blocks, input at the top, with the key settings of each. A block with a problem has a
    red border and ⚠️; every box carries its block id so a click can show its tensors (block_detail)."""
    bad = {p.block for p in problems if p.block is not None}
    boxes = []
    for i, b in enumerate(spec.get("blocks", [])):
        if not isinstance(b, dict):
            continue
        t = b.get("type", "?")
        detail = _details(spec, b)
        border = "3px solid #dc2626" if i in bad else "3px solid #111" if b.get("_id") == selected else \
            "3px solid transparent"
        mark = "⚠️ " if i in bad else ""
        boxes.append(f"<div data-block='{html.escape(str(b.get('_id', i)))}' class='diagram-block"
                     f"{' has-problem' if i in bad else ''}' title='click: tensors and parameters' style='background:"
                     f"{COLORS.get(t, '#eee')};border:{border};border-radius:8px;padding:6px 10px;margin:3px auto;"
                     f"max-width:420px;text-align:center;color:#111;cursor:pointer'><b>{mark}{i} · {html.escape(t)}</b>"
                     f"<br><small>{html.escape(detail)}</small></div>")
    arrow = "<div style='text-align:center;color:#888'>↓</div>"
    return "<div>" + "<div style='text-align:center;color:#888'>token ids</div>" + arrow + arrow.join(boxes) + \
        arrow + "<div style='text-align:center;color:#888'>next-token scores</div></div>"


def _details(spec: dict, block: dict) -> str:
    """A block's own short description (its module's describe), read leniently: a spec mid-edit still shows one
    (a bad field reads as its default)."""
    if block.get("type") not in BLOCK_TYPES:
        return ""
    try:
        top = parse_record(ModelSpec, {k: v for k, v in spec.items() if k in GLOBALS}, "", [], text=False)
        parsed = parse_record(BLOCK_TYPES[block["type"]], {k: v for k, v in block.items() if k != "_id"}, "", [],
                              text=False)
        return module_of(parsed).describe(parsed, top)[1]
    except Exception:  # noqa: BLE001 - a spec mid-edit: no details rather than no diagram
        return ""


# Clicking a box in the diagram sends its block id (event delegation: the boxes are re-rendered on every edit).
DIAGRAM_JS = ("element.addEventListener('click', (e) => { const b = e.target.closest('[data-block]'); "
              "if (b) trigger('click', {block: b.dataset.block}); });")


def _known_fields() -> dict[str, dict]:
    """Every field path a spec can have -> its metadata (the registry can grow, so this is not cached)."""
    known = {p: meta for p, _, meta in leaf_fields(ModelSpec)}
    for t in BLOCK_TYPES:
        for p, _, meta in field_widgets(t):
            known.setdefault(p, meta)
    return {"type": {}, "blocks": {}, "spec": {}, **known}


def _field_text(field: str) -> str:
    """A problem's field as the learner knows it: the widget's label in bold; a key from pasted JSON that is no
    field at all stays a (defanged) code span."""
    if not field:
        return "**Block**"
    if field in _known_fields():
        return f"**{html.escape(field_label(field))}**"
    return f"`{_in_code(field)}`"


def problem_lines(spec: dict, problems) -> str:
    """Every problem with its block and the field's human label (no dotted names)."""
    blocks = spec.get("blocks", []) if isinstance(spec, dict) else []

    def where(p) -> str:
        if p.block is None:
            return "**Spec**"
        b = blocks[p.block] if p.block < len(blocks) and isinstance(blocks[p.block], dict) else {}
        t = b.get("type")
        return f"**Block {p.block} · {t}**" if t in BLOCK_TYPES else f"**Block {p.block}**"

    return "\n".join(f"- {where(p)} · {_field_text(p.field) + ': ' if p.field else ''}{html.escape(p.message)}"
                     for p in problems)


def estimate_line(parsed: ModelSpec) -> str:
    batch = TrainConfig.batch_size  # the Train tab's default batch, so the memory figure is the run's
    e = estimate(parsed, batch_size=batch)
    active = f", {human(e.active_params)} active per token" if e.active_params != e.params else ""  # experts
    state = f" + {human(e.state_bytes_per_sequence, 'B')} fixed state/sequence (Mamba2 / convolution layers)" \
        if e.state_bytes_per_sequence else ""
    return (f"**{human(e.params)} parameters** ({human(e.embedding_params)} in embeddings{active}) · "
            f"{human(e.flops_per_token_forward, 'FLOP')}/token forward, {human(e.flops_per_token_train, 'FLOP')}/token "
            f"training · training memory ≈ {human(e.train_total_bytes, 'B')} (batch {batch}: weights "
            f"{human(e.train_weights_bytes, 'B')}, grads {human(e.train_grads_bytes, 'B')}, optimizer "
            f"{human(e.train_optimizer_bytes, 'B')}, activations {human(e.train_activations_bytes, 'B')}) · KV cache "
            f"{human(e.kv_cache_bytes_per_token, 'B')}/token{state}\n\n<small>Counted with this spec's own vocabulary "
            f"{parsed.vocab_size:,} tokens. Training uses the vocabulary the tokenizer gives (a char tokenizer: one "
            f"token per distinct character), so the count that trains can differ: the Train tab shows the exact "
            f"figure, and checks it against this app's limits, before Start.</small>")


def summary(spec: dict, last_valid: dict | None = None) -> tuple[str, str]:
    """(problems markdown, estimate markdown). While the spec has problems the estimate shows the last valid
    spec's figures, marked stale, so the numbers never vanish mid-edit."""
    parsed, problems = check(spec)
    if problems:
        stale = ""
        if last_valid:
            old, _ = check(last_valid)
            if old is not None:
                stale = "⏸️ *Stale: the figures of the last valid spec (fix the problems to update them)*\n\n" + \
                    estimate_line(old)
        return "### ⚠️ Problems\n" + problem_lines(spec, problems), stale
    return "✅ The spec is valid.", estimate_line(parsed)


def block_detail(spec: dict, bid: str | None) -> str:
    """The clicked block's weight tensors, activation shapes and parameter count (from estimate.block_costs)."""
    if not bid:
        return "<small>Click a block in the diagram to see its tensors and parameter count.</small>"
    i = _index(spec, bid) if isinstance(spec.get("blocks"), list) else None
    if i is None:
        return "<small>That block was removed; click another one.</small>"
    parsed, problems = check(spec)
    if problems:
        return f"**{i} · {html.escape(str(spec['blocks'][i].get('type')))}**: fix the problems above to see its tensors."
    cost = block_costs(parsed)[i]
    total = estimate(parsed).params
    lines = [f"#### {i} · {cost.type}: {cost.params:,} parameters ({100 * cost.params / max(total, 1):.1f}% of "
             f"{human(total)})"]
    if cost.note:
        lines.append(html.escape(cost.note))
    lines.append("\n| activation | shape |\n|---|---|\n" +
                 "\n".join(f"| {html.escape(what)} | `{shape}` |" for what, shape in cost.shapes))
    if cost.tensors:
        shown = cost.tensors[:24]
        rows = "\n".join(f"| <code>{html.escape(name).replace('.', '.<wbr>')}</code> | "
                         f"{' × '.join(str(d) for d in shape)} | {numel(shape):,} |" for name, shape in shown)
        more = f"\n\n… and {len(cost.tensors) - len(shown)} more tensors" if len(cost.tensors) > len(shown) else ""
        lines.append(f"\n| weight | shape | parameters |\n|---|---|---|\n{rows}{more}")
    return "\n".join(lines)


def _in_code(text: str) -> str:
    """Text for inside a Markdown code span: a key from pasted JSON can hold a backtick or a line break."""
    return re.sub(r"[`\s<>&]", "?", str(text))


def validate_spec(spec_json: str) -> tuple[str, str]:
    """API: validate a spec given as JSON text → (problems or ✅, estimate)."""
    try:
        spec = ModelSpec.from_json(spec_json or "")
    except SpecError as e:  # for API callers: each problem with its block index and field path
        return "### ⚠️ Problems\n" + "\n".join(f"- {html.escape(str(p))}" for p in e.problems), ""
    return summary(spec.to_dict())


def layout_key(spec: dict) -> list:
    """What the rendered block list is made of: the blocks' ids and types in order, and the fields each shows.
    Field widgets keep what the learner typed and problems are updated in place, so an edit that leaves this alone
    needs no redraw; a choice that hides or shows fields (a positional kind) does."""
    return [[b.get("_id"), b.get("type"), sorted(moot_fields(b))] if isinstance(b, dict) else [None, None, []]
            for b in spec.get("blocks", [])]


def renamed(spec: dict) -> dict:
    """`spec` named after what it is: a preset's name while it is that preset, "custom (from llama)" once edited
    away from it (the JSON, the card and the Compare table then never claim an edited spec is the preset)."""
    name = spec.get("name")
    m = re.fullmatch(r"custom \(from (.+)\)", name) if isinstance(name, str) else None
    base = m.group(1) if m else name
    presets = list_presets()
    if base not in presets:
        return spec
    same = {k: v for k, v in clean(spec).items() if k != "name"} == \
        {k: v for k, v in clean(preset_state(base)).items() if k != "name"}
    spec["name"] = base if same else f"custom (from {base})"
    return spec


def block_problems(problems: list, i: int) -> str:
    """The problems of block i, one line each, as shown under the block."""
    return "\n\n".join(f"⚠️ {_field_text(p.field)}: {html.escape(p.message)}" for p in problems if p.block == i)


# ----------------------------------------------------------------------------- undo

UNDO_DEPTH = 10


def _push(stack: list, label: str, spec: dict, preset_name) -> tuple[list, dict]:
    """The undo stack with one more entry, and the Undo button showing what it would undo."""
    stack = (list(stack or []) + [(label, copy.deepcopy(spec), preset_name)])[-UNDO_DEPTH:]
    return stack, gr.update(value=f"↶ {label}", visible=True)


def undo(stack):
    """Put back the spec (and the preset shown) from before the newest undoable change."""
    stack = list(stack or [])
    if not stack:
        return gr.update(), gr.update(), gr.update(), stack, gr.update(visible=False)
    _, spec, preset_name = stack.pop()
    button = gr.update(value=f"↶ {stack[-1][0]}", visible=True) if stack else gr.update(visible=False)
    presets = list_presets()
    info = presets.get(preset_name, "") if preset_name in presets else gr.update()
    return spec, preset_name if preset_name in presets else gr.update(), info, stack, button


def _same(a: dict, b: dict) -> bool:
    return clean(a) == clean(b)


def switch_preset(name, spec, stack, info):
    """Load a preset; the blocks it replaces can be brought back with Undo."""
    presets = list_presets()
    if name not in presets:
        return spec, info, stack, gr.update()
    previous = next((n for n in presets if _same(preset_state(n), spec)), None)
    if previous == name:  # already this preset, untouched (the dropdown can fire twice): nothing to undo
        return spec, presets[name], stack, gr.update()
    stack, button = _push(stack, f"Undo: back to the blocks before {name}", spec, previous)
    return preset_state(name), presets[name], stack, button


# ----------------------------------------------------------------------------- edits (pure functions of the state)


def _index(spec: dict, bid: str) -> int | None:
    return next((i for i, b in enumerate(spec["blocks"]) if isinstance(b, dict) and b.get("_id") == bid), None)


def setter(bid: str, path: str, hint=None):
    optional = optional_number(hint)
    whole = unwrap_optional(hint)[0] is int

    def set_value(value, spec):
        spec = copy.deepcopy(spec)
        i = _index(spec, bid)
        if i is not None:
            if optional is not None:
                value = parse_optional_number(value, optional)
            if isinstance(value, float) and value.is_integer() and whole:  # Gradio's Number sends 4.0 for 4
                value = int(value)
            set_path(spec["blocks"][i], path, value)
        return renamed(spec)
    return set_value


def global_setter(name: str):
    def set_value(value, spec):
        spec = copy.deepcopy(spec)
        if isinstance(value, float) and value.is_integer() and name in ("vocab_size", "d_model", "max_seq_len"):
            value = int(value)
        spec[name] = value
        return renamed(spec)
    return set_value


def _edit(bid: str, change):
    """An event handler applying change(blocks, i) to a copy of the state, i = the block with this _id."""
    def apply(spec):
        spec = copy.deepcopy(spec)
        i = _index(spec, bid)
        if i is not None:
            change(spec["blocks"], i)
        return renamed(spec)
    return apply


def mover(bid: str, delta: int):
    def move(blocks, i):
        if 0 <= i + delta < len(blocks):
            blocks[i], blocks[i + delta] = blocks[i + delta], blocks[i]
    return _edit(bid, move)


def duplicator(bid: str):
    def duplicate(blocks, i):
        blocks.insert(i + 1, {**copy.deepcopy(blocks[i]), "_id": uuid.uuid4().hex[:8]})
    return _edit(bid, duplicate)


def _remover(bid: str):
    return _edit(bid, lambda blocks, i: blocks.pop(i))


def remover_undoable(bid: str):
    """Remove the block; Undo puts it back."""
    def remove(spec, stack, preset_name):
        i = _index(spec, bid)
        if i is None:
            return spec, stack, gr.update()
        stack, button = _push(stack, f"Undo remove {i} · {spec['blocks'][i].get('type')}", spec, preset_name)
        return _remover(bid)(spec), stack, button
    return remove


def adder(block_type: str, spec):
    """Insert a new block where it is valid: a layer after the last layer (above final_norm), anything else
    above lm_head (at the end when there is none)."""
    spec = copy.deepcopy(spec)
    block = with_ids({"blocks": [_as_json(block_type)]})["blocks"][0]
    blocks = spec["blocks"]
    types = [b.get("type") if isinstance(b, dict) else None for b in blocks]
    at = types.index("lm_head") if "lm_head" in types else len(blocks)
    if block_type in layer_types() and "final_norm" in types[:at]:
        at = types.index("final_norm")
    blocks.insert(at, block)
    return renamed(spec)


def apply_json(text: str, spec):
    """The spec from JSON text, or the old spec and a message saying what is wrong with the text."""
    try:
        if len((text or "").encode()) > MAX_SPEC_BYTES:
            raise ValueError(f"the JSON is larger than {MAX_SPEC_BYTES // 1024} KB; a spec is a short object")
        data = json.loads(text or "")
        if not isinstance(data, dict):
            raise ValueError("the JSON must be an object with 'blocks'")
        if not isinstance(data.get("blocks", []), list):
            raise ValueError("'blocks' must be a list")
    except RecursionError:
        return spec, "⚠️ The JSON is nested too deeply to be a spec."
    except ValueError as e:
        return spec, f"⚠️ Could not read the JSON: {html.escape(str(e))}. Fix it and press Apply again."
    return with_ids(clean(data)), "Applied. Problems, if any, are listed above and next to each block."


def upload_json(file, spec):
    try:
        with open(file if isinstance(file, str) else file.name, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
        return apply_json(raw.decode("utf-8"), spec)
    except UnicodeDecodeError:
        return spec, "⚠️ The file is not UTF-8 text; upload a .json spec."


def undoable(replace):
    """A spec-replacing handler (Apply JSON, Upload) whose old spec Undo brings back when it did replace it."""
    def apply(value, spec, stack, preset_name):
        new, message = replace(value, spec)
        if new is spec:
            return spec, message, stack, gr.update()
        stack, button = _push(stack, "Undo: back to the blocks before the JSON", spec, preset_name)
        return new, message, stack, button
    return apply
