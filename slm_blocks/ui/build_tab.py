"""Build tab: a preset picker, an editable block list, live validation, estimate and a diagram.

The block list is a `gr.State` holding the spec as a JSON dict (each block carries a stable `_id` so
`gr.render` keeps rows attached to their block when the list is reordered). All knowledge of what a block
can hold comes from the engine's spec dataclasses; the UI only turns their fields into widgets.
"""

from __future__ import annotations

import copy
import html
import json
import re
import typing
import uuid
from dataclasses import fields

import gradio as gr

from .. import BLOCK_TYPES, ModelSpec, SpecError, block_help, estimate, list_presets, load_preset
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


def field_groups(block_type: str) -> list[tuple[str, list]]:
    """field_widgets grouped by sub-spec ("" = the block's own fields), in declaration order."""
    groups: dict[str, list] = {}
    for path, hint, meta in field_widgets(block_type):
        groups.setdefault(path.split(".")[0] if "." in path else "", []).append((path, hint, meta))
    return list(groups.items())


def make_widget(path: str, hint, meta: dict, value, key: str):
    """One input for one spec field (ui/widgets.py), labelled as the field's metadata says."""
    return field_widget(hint, meta, value, label=field_label(path), key=key, boxed=True)


# ----------------------------------------------------------------------------- views


COLORS = {"embedding": "#c7d2fe", "positional": "#ddd6fe", "transformer": "#bbf7d0", "attention": "#fde68a",
          "mlp": "#fecaca", "norm": "#e5e7eb", "final_norm": "#e5e7eb", "lm_head": "#bae6fd"}


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
    return (f"**{human(e.params)} parameters** ({human(e.embedding_params)} in embeddings) · "
            f"{human(e.flops_per_token_forward, 'FLOP')}/token forward, {human(e.flops_per_token_train, 'FLOP')}/token "
            f"training · training memory ≈ {human(e.train_total_bytes, 'B')} (batch {batch}: weights "
            f"{human(e.train_weights_bytes, 'B')}, grads {human(e.train_grads_bytes, 'B')}, optimizer "
            f"{human(e.train_optimizer_bytes, 'B')}, activations {human(e.train_activations_bytes, 'B')}) · KV cache "
            f"{human(e.kv_cache_bytes_per_token, 'B')}/token\n\n<small>Counted with this spec's own vocabulary "
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
        rows = "\n".join(f"| `{html.escape(name)}` | `{tuple(shape)}` | {numel(shape):,} |" for name, shape in shown)
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


# ----------------------------------------------------------------------------- the tab


def build_tab(spec_state: gr.State, spec_json: gr.Textbox):
    """Lay out the tab; returns (refresh function, its inputs, its outputs) for demo.load."""
    presets = list_presets()
    last_valid = gr.State(None)  # the last spec without problems: its figures stay visible, marked stale
    undo = gr.State([])  # [(button label, spec, preset name)], newest last: Remove, preset switch, Apply JSON
    selected = gr.State(None)  # the block id clicked in the diagram
    layout = gr.State(None)  # the blocks' ids and types in order (layout_key): the block list is redrawn when it changes
    with gr.Row():
        preset = gr.Dropdown(list(presets), value="tiny-char", label="Start from a preset", scale=2,
                             info="switching replaces the blocks (Undo brings yours back)")
        preset_info = gr.Markdown(presets["tiny-char"])
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown("### Global sizes")
            with gr.Row():
                globals_ = {name: make_widget(name, typing.get_type_hints(ModelSpec)[name],
                                              next(f.metadata for f in fields(ModelSpec) if f.name == name),
                                              None, key=f"global-{name}") for name in GLOBALS}
            with gr.Row(equal_height=True):
                gr.Markdown("### Blocks (top = input)")
                undo_btn = gr.Button("Undo", visible=False, size="sm", scale=0, min_width=260, elem_id="build-undo")

            # Redrawn only when blocks are added, removed or moved, not on every field edit: a redraw rebuilds every
            # widget of every block (seconds on a big spec), and a field typed into during a redraw was lost.
            @gr.render(inputs=spec_state, triggers=[layout.change])
            def render_blocks(spec):
                _, problems = check(spec)
                blocks, problem_boxes = spec.get("blocks", []), []
                for i, block in enumerate(blocks):
                    if not isinstance(block, dict):
                        continue
                    bid, btype = block.get("_id", str(i)), block.get("type")
                    with gr.Group(key=f"group-{bid}"):
                        with gr.Row(key=f"head-{bid}"):
                            gr.Markdown(f"**{i} · {html.escape(str(btype))}** — "  # a type from pasted JSON
                                        f"{block_help(btype) if btype in BLOCK_TYPES else ''}",
                                        key=f"title-{bid}")
                            up = gr.Button("↑", size="sm", min_width=40, scale=0, key=f"up-{bid}")
                            down = gr.Button("↓", size="sm", min_width=40, scale=0, key=f"down-{bid}")
                            dup = gr.Button("Duplicate", size="sm", scale=0, key=f"dup-{bid}")
                            rm = gr.Button("Remove", size="sm", variant="stop", scale=0, key=f"rm-{bid}")
                        for group, items in (field_groups(btype) if btype in BLOCK_TYPES else []):
                            with gr.Row(key=f"fields-{bid}-{group}", elem_classes=["field-row"]):
                                for path, hint, meta in items:
                                    w = make_widget(path, hint, meta, get_path(block, path), key=f"{bid}-{path}")
                                    event = w.blur if isinstance(w, (gr.Number, gr.Textbox)) else w.input
                                    event(_setter(bid, path, hint), [w, spec_state], spec_state,
                                          api_visibility="private", show_progress="hidden")
                        text = block_problems(problems, i)
                        # always visible (an empty Markdown is 0 px high) and updated by value only: a gr.update()
                        # makes Gradio 6.31 swap in an unrendered copy of the component, and a redraw running at that
                        # moment failed ("'Markdown' object has no attribute 'page'"), freezing the block list
                        problem_boxes.append(gr.Markdown(text, key=f"problems-{bid}"))
                    up.click(_mover(bid, -1), spec_state, spec_state, api_visibility="private")
                    down.click(_mover(bid, +1), spec_state, spec_state, api_visibility="private")
                    dup.click(_duplicator(bid), spec_state, spec_state, api_visibility="private")
                    rm.click(_remover_undoable(bid), [spec_state, undo, preset], [spec_state, undo, undo_btn],
                             api_visibility="private")

                def show_problems(spec):  # every edit: the problems under each block, without a redraw
                    _, problems = check(spec)
                    return [block_problems(problems, i) for i in range(len(problem_boxes))]

                # on spec_json (a Textbox every spec change rewrites): a listener inside the render on the State
                # itself stopped every State update of the page (Gradio 6.31)
                spec_json.change(show_problems, spec_state, problem_boxes, api_visibility="private",
                                 show_progress="hidden")

            with gr.Row():
                add_type = gr.Dropdown(list(BLOCK_TYPES), value="transformer", label="Block type to add", scale=2,
                                       info="layers go after the last layer; other blocks above lm_head")
                add_btn = gr.Button("Add block", scale=1)
            add_help = gr.Markdown(block_help("transformer"))
        with gr.Column(scale=2):
            problems_md = gr.Markdown(elem_id="build-problems")
            estimate_md = gr.Markdown(elem_id="build-estimate")
            diagram_html = gr.HTML(js_on_load=DIAGRAM_JS, elem_id="build-diagram")
            detail_md = gr.Markdown(block_detail({}, None), elem_id="build-block-detail")
            with gr.Accordion("Spec as JSON (copy, paste, upload, download)", open=False):
                code = gr.Code(language="json", label="spec.json", interactive=True)
                with gr.Row():
                    apply_btn = gr.Button("Apply JSON")
                    upload = gr.UploadButton("Upload spec.json", file_types=[".json"])
                json_msg = gr.Markdown()

    def on_state(spec, last, chosen):
        parsed, problems = check(spec)
        last = spec if parsed is not None else last
        p, e = summary(spec, last)
        values = [spec.get(name) for name in GLOBALS]
        text = json.dumps(clean(spec), indent=2)
        return [p, e, diagram(spec, problems, chosen), block_detail(spec, chosen), text, text, last,
                layout_key(spec), *values]

    def on_click(spec, evt: gr.EventData):
        bid = (getattr(evt, "_data", None) or {}).get("block")
        _, problems = check(spec)
        return bid, diagram(spec, problems, bid), block_detail(spec, bid)

    inputs = [spec_state, last_valid, selected]
    outputs = [problems_md, estimate_md, diagram_html, detail_md, code, spec_json, last_valid, layout,
               *globals_.values()]
    spec_state.change(on_state, inputs, outputs, api_visibility="private", show_progress="hidden")
    diagram_html.click(on_click, spec_state, [selected, diagram_html, detail_md], api_visibility="private",
                       show_progress="hidden")
    # .input, not .change: Undo sets the dropdown back without loading that preset again
    preset.input(_switch_preset, [preset, spec_state, undo, preset_info], [spec_state, preset_info, undo, undo_btn],
                 api_visibility="private")
    undo_btn.click(_undo, undo, [spec_state, preset, preset_info, undo, undo_btn], api_visibility="private")
    for name, widget in globals_.items():
        event = widget.blur if isinstance(widget, gr.Number) else widget.input
        event(_global_setter(name), [widget, spec_state], spec_state, api_visibility="private", show_progress="hidden")
    add_type.change(lambda t: block_help(t), add_type, add_help, api_visibility="private")
    add_btn.click(_adder, [add_type, spec_state], spec_state, api_visibility="private")
    apply_btn.click(_undoable(_apply_json), [code, spec_state, undo, preset], [spec_state, json_msg, undo, undo_btn],
                    api_visibility="private")
    upload.upload(_undoable(_upload_json), [upload, spec_state, undo, preset], [spec_state, json_msg, undo, undo_btn],
                  api_visibility="private")
    return on_state, inputs, outputs


def layout_key(spec: dict) -> list:
    """What the rendered block list is made of: the blocks' ids and types, in order. Field widgets keep what the
    learner typed and problems are updated in place, so an edit that leaves this alone needs no redraw."""
    return [[b.get("_id"), b.get("type")] if isinstance(b, dict) else [None, None] for b in spec.get("blocks", [])]


def block_problems(problems: list, i: int) -> str:
    """The problems of block i, one line each, as shown under the block."""
    return "\n\n".join(f"⚠️ {_field_text(p.field)}: {html.escape(p.message)}" for p in problems if p.block == i)


# ----------------------------------------------------------------------------- undo

UNDO_DEPTH = 10


def _push(stack: list, label: str, spec: dict, preset_name) -> tuple[list, dict]:
    """The undo stack with one more entry, and the Undo button showing what it would undo."""
    stack = (list(stack or []) + [(label, copy.deepcopy(spec), preset_name)])[-UNDO_DEPTH:]
    return stack, gr.update(value=f"↶ {label}", visible=True)


def _undo(stack):
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


def _switch_preset(name, spec, stack, info):
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


def _setter(bid: str, path: str, hint=None):
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
        return spec
    return set_value


def _global_setter(name: str):
    def set_value(value, spec):
        spec = copy.deepcopy(spec)
        if isinstance(value, float) and value.is_integer() and name in ("vocab_size", "d_model", "max_seq_len"):
            value = int(value)
        spec[name] = value
        return spec
    return set_value


def _edit(bid: str, change):
    """An event handler applying change(blocks, i) to a copy of the state, i = the block with this _id."""
    def apply(spec):
        spec = copy.deepcopy(spec)
        i = _index(spec, bid)
        if i is not None:
            change(spec["blocks"], i)
        return spec
    return apply


def _mover(bid: str, delta: int):
    def move(blocks, i):
        if 0 <= i + delta < len(blocks):
            blocks[i], blocks[i + delta] = blocks[i + delta], blocks[i]
    return _edit(bid, move)


def _duplicator(bid: str):
    def duplicate(blocks, i):
        blocks.insert(i + 1, {**copy.deepcopy(blocks[i]), "_id": uuid.uuid4().hex[:8]})
    return _edit(bid, duplicate)


def _remover(bid: str):
    return _edit(bid, lambda blocks, i: blocks.pop(i))


def _remover_undoable(bid: str):
    """Remove the block; Undo puts it back."""
    def remove(spec, stack, preset_name):
        i = _index(spec, bid)
        if i is None:
            return spec, stack, gr.update()
        stack, button = _push(stack, f"Undo remove {i} · {spec['blocks'][i].get('type')}", spec, preset_name)
        return _remover(bid)(spec), stack, button
    return remove


def _adder(block_type: str, spec):
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
    return spec


def _apply_json(text: str, spec):
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


def _upload_json(file, spec):
    try:
        with open(file if isinstance(file, str) else file.name, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
        return _apply_json(raw.decode("utf-8"), spec)
    except UnicodeDecodeError:
        return spec, "⚠️ The file is not UTF-8 text; upload a .json spec."


def _undoable(replace):
    """A spec-replacing handler (Apply JSON, Upload) whose old spec Undo brings back when it did replace it."""
    def apply(value, spec, stack, preset_name):
        new, message = replace(value, spec)
        if new is spec:
            return spec, message, stack, gr.update()
        stack, button = _push(stack, "Undo: back to the blocks before the JSON", spec, preset_name)
        return new, message, stack, button
    return apply
