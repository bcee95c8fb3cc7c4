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
from dataclasses import fields, is_dataclass

import gradio as gr

from .. import BLOCK_TYPES, ModelSpec, SpecError, block_help, estimate, list_presets, load_preset
from ..model.estimate import human
from ..model.spec import MAX_SPEC_BYTES
from ..model.validate import LAYER_TYPES
from ..training.schema import parse_number

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
    out = []

    def walk(cls, prefix: str):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name == "type":
                continue
            hint = hints[f.name]
            inner = [a for a in typing.get_args(hint) if a is not type(None)]
            target = inner[0] if inner and is_dataclass(inner[0]) else hint
            if is_dataclass(target):
                walk(target, f"{prefix}{f.name}.")
            else:
                out.append((prefix + f.name, hint, dict(f.metadata)))

    walk(BLOCK_TYPES[block_type], "")
    return out


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


# Short human labels (unique within a block); a field missing here falls back to its name.
LABELS = {
    "vocab_size": "Vocabulary size", "d_model": "Width (d_model)", "max_seq_len": "Context length",
    "tie_embeddings": "Tie embedding and head", "init_std": "Init std", "dropout": "Dropout",
    "scale": "Scale by √d_model", "kind": "Kind", "rope_theta": "RoPE base", "local_rope_theta": "RoPE base (window)",
    "repeat": "Layers (repeat)", "norm_placement": "Norm placement", "residual": "Residual",
    "full_attention_every": "Full attention every",
    "attention.n_heads": "Heads", "attention.n_kv_heads": "KV heads", "attention.head_dim": "Head size",
    "attention.qkv_bias": "q/k/v bias", "attention.out_bias": "Output bias", "attention.qk_norm": "QK-norm",
    "attention.sliding_window": "Sliding window", "attention.dropout": "Attention dropout",
    "mlp.activation": "Activation", "mlp.gated": "Gated (GLU)", "mlp.hidden": "Hidden width", "mlp.bias": "MLP bias",
    "norm.kind": "Norm kind", "norm.eps": "Norm epsilon", "norm.bias": "Norm bias",
}
# What an empty optional field means, shown as its placeholder.
DEFAULTS = {
    "attention.n_kv_heads": "= heads", "attention.head_dim": "d_model / heads", "attention.sliding_window": "all tokens",
    "mlp.hidden": "4 × d_model", "local_rope_theta": "= RoPE base", "full_attention_every": "never",
}


def field_label(path: str) -> str:
    """The label a learner sees for a spec field (the browser tests find fields by it)."""
    return LABELS.get(path, path.rsplit(".", 1)[-1].replace("_", " ").capitalize())


def field_groups(block_type: str) -> list[tuple[str, list]]:
    """field_widgets grouped by sub-spec ("" = the block's own fields), in declaration order."""
    groups: dict[str, list] = {}
    for path, hint, meta in field_widgets(block_type):
        groups.setdefault(path.split(".")[0] if "." in path else "", []).append((path, hint, meta))
    return list(groups.items())


def make_widget(path: str, hint, meta: dict, value, key: str):
    """One input for one spec field. Every widget says interactive=True: Gradio 6 makes a component created
    inside gr.render read-only unless told otherwise (a field that starts with a value looked editable but
    ignored typing and clicks)."""
    label, info = field_label(path), meta.get("help") or None
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    common = dict(label=label, info=info, key=key, preserved_by_key=None, interactive=True)
    if typing.get_origin(base) is typing.Literal:
        return gr.Dropdown(list(typing.get_args(base)), value=value, min_width=140, **common)
    if base is bool:  # in a Column: Gradio 6's Checkbox ignores min_width and gets squeezed in a full Row
        with gr.Column(min_width=140, key=f"col-{key}"):
            return gr.Checkbox(value=bool(value), **common)
    if optional and base in (int, float):
        # a Textbox, not a Number: Gradio 6's Number shows (and sends back) 0 for an empty value
        return gr.Textbox(value="" if value is None else str(value), placeholder=DEFAULTS.get(path, "default"),
                          min_width=140, **common)
    if base in (int, float):
        return gr.Number(value=value, precision=0 if base is int else None, min_width=140, **common)
    return gr.Textbox(value=value, **common)


# ----------------------------------------------------------------------------- views


COLORS = {"embedding": "#c7d2fe", "positional": "#ddd6fe", "transformer": "#bbf7d0", "attention": "#fde68a",
          "mlp": "#fecaca", "norm": "#e5e7eb", "final_norm": "#e5e7eb", "lm_head": "#bae6fd"}


def diagram(spec: dict) -> str:
    """An HTML stack of the blocks, input at the top, with the key settings of each."""
    boxes = []
    for i, b in enumerate(spec.get("blocks", [])):
        if not isinstance(b, dict):
            continue
        t = b.get("type", "?")
        detail = ""
        if t == "positional":
            detail = str(b.get("kind"))
        elif t in ("transformer", "attention"):
            a = b.get("attention", {}) or {}
            detail = f"{a.get('n_heads')} heads" + (f", {a.get('n_kv_heads')} kv" if a.get("n_kv_heads") else "")
            if a.get("sliding_window"):
                detail += f", window {a['sliding_window']}"
            if t == "transformer":
                detail = f"×{b.get('repeat', 1)} · {detail} · {b.get('norm_placement', 'pre')}-norm"
        elif t == "mlp":
            m = b.get("mlp", {}) or {}
            detail = ("gated " if m.get("gated") else "") + str(m.get("activation"))
        boxes.append(f"<div style='background:{COLORS.get(t, '#eee')};border-radius:8px;padding:6px 10px;"
                     f"margin:3px auto;max-width:420px;text-align:center;color:#111'><b>{i} · {html.escape(t)}</b>"
                     f"<br><small>{html.escape(detail)}</small></div>")
    arrow = "<div style='text-align:center;color:#888'>↓</div>"
    return "<div>" + "<div style='text-align:center;color:#888'>token ids</div>" + arrow + arrow.join(boxes) + \
        arrow + "<div style='text-align:center;color:#888'>next-token scores</div></div>"


def summary(spec: dict) -> tuple[str, str]:
    """(problems markdown, estimate markdown)."""
    parsed, problems = check(spec)
    if problems:
        return "### ⚠️ Problems\n" + "\n".join(f"- {html.escape(str(p))}" for p in problems), ""
    e = estimate(parsed, batch_size=12)
    return "✅ The spec is valid.", (
        f"**{human(e.params)} parameters** ({human(e.embedding_params)} in embeddings) · "
        f"{human(e.flops_per_token_forward, 'FLOP')}/token forward, {human(e.flops_per_token_train, 'FLOP')}/token "
        f"training · training memory ≈ {human(e.train_total_bytes, 'B')} (batch 12: weights "
        f"{human(e.train_weights_bytes, 'B')}, grads {human(e.train_grads_bytes, 'B')}, AdamW "
        f"{human(e.train_optimizer_bytes, 'B')}, activations {human(e.train_activations_bytes, 'B')}) · KV cache "
        f"{human(e.kv_cache_bytes_per_token, 'B')}/token · vocabulary {parsed.vocab_size:,} tokens (training uses "
        "the tokenizer's: the Train tab shows the model it really gives, and checks it against this app's limits, "
        "before Start)")


def _in_code(text: str) -> str:
    """Text for inside a Markdown code span: a key from pasted JSON can hold a backtick or a line break."""
    return re.sub(r"[`\s<>&]", "?", str(text))


def validate_spec(spec_json: str) -> tuple[str, str]:
    """API: validate a spec given as JSON text → (problems or ✅, estimate)."""
    try:
        spec = ModelSpec.from_json(spec_json or "")
    except SpecError as e:
        return "### ⚠️ Problems\n" + "\n".join(f"- {html.escape(str(p))}" for p in e.problems), ""
    return summary(spec.to_dict())


# ----------------------------------------------------------------------------- the tab


def build_tab(spec_state: gr.State, spec_json: gr.Textbox):
    """Lay out the tab; returns (refresh function, its outputs) for demo.load."""
    presets = list_presets()
    with gr.Row():
        preset = gr.Dropdown(list(presets), value="tiny-char", label="Start from a preset", scale=2)
        preset_info = gr.Markdown(presets["tiny-char"])
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown("### Global sizes")
            with gr.Row():
                globals_ = {name: make_widget(name, typing.get_type_hints(ModelSpec)[name],
                                              next(f.metadata for f in fields(ModelSpec) if f.name == name),
                                              None, key=f"global-{name}") for name in GLOBALS}
            gr.Markdown("### Blocks (top = input)")

            @gr.render(inputs=spec_state)
            def render_blocks(spec):
                _, problems = check(spec)
                blocks = spec.get("blocks", [])
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
                                    event(_setter(bid, path, optional_number(hint)), [w, spec_state], spec_state,
                                          api_visibility="private", show_progress="hidden")
                        mine = [p for p in problems if p.block == i]
                        if mine:
                            gr.Markdown("\n".join(f"⚠️ `{_in_code(p.field)}`: {html.escape(p.message)}"
                                                  for p in mine),
                                        key=f"problems-{bid}")
                    up.click(_mover(bid, -1), spec_state, spec_state, api_visibility="private")
                    down.click(_mover(bid, +1), spec_state, spec_state, api_visibility="private")
                    dup.click(_duplicator(bid), spec_state, spec_state, api_visibility="private")
                    rm.click(_remover(bid), spec_state, spec_state, api_visibility="private")

            with gr.Row():
                add_type = gr.Dropdown(list(BLOCK_TYPES), value="transformer", label="Block type to add", scale=2,
                                       info="layers go after the last layer; other blocks above lm_head")
                add_btn = gr.Button("Add block", scale=1)
            add_help = gr.Markdown(block_help("transformer"))
        with gr.Column(scale=2):
            problems_md = gr.Markdown()
            estimate_md = gr.Markdown()
            diagram_html = gr.HTML()
            with gr.Accordion("Spec as JSON (copy, paste, upload, download)", open=False):
                code = gr.Code(language="json", label="spec.json", interactive=True)
                with gr.Row():
                    apply_btn = gr.Button("Apply JSON")
                    upload = gr.UploadButton("Upload spec.json", file_types=[".json"])
                json_msg = gr.Markdown()

    def on_state(spec):
        p, e = summary(spec)
        values = [spec.get(name) for name in GLOBALS]
        text = json.dumps(clean(spec), indent=2)
        return [p, e, diagram(spec), text, text, *values]

    outputs = [problems_md, estimate_md, diagram_html, code, spec_json, *globals_.values()]
    spec_state.change(on_state, spec_state, outputs, api_visibility="private", show_progress="hidden")
    preset.change(lambda n: (preset_state(n), list_presets()[n]), preset, [spec_state, preset_info],
                  api_visibility="private")
    for name, widget in globals_.items():
        event = widget.blur if isinstance(widget, gr.Number) else widget.input
        event(_global_setter(name), [widget, spec_state], spec_state, api_visibility="private", show_progress="hidden")
    add_type.change(lambda t: block_help(t), add_type, add_help, api_visibility="private")
    add_btn.click(_adder, [add_type, spec_state], spec_state, api_visibility="private")
    apply_btn.click(_apply_json, [code, spec_state], [spec_state, json_msg], api_visibility="private")
    upload.upload(_upload_json, [upload, spec_state], [spec_state, json_msg], api_visibility="private")
    return on_state, outputs


# ----------------------------------------------------------------------------- edits (pure functions of the state)


def _index(spec: dict, bid: str) -> int | None:
    return next((i for i, b in enumerate(spec["blocks"]) if isinstance(b, dict) and b.get("_id") == bid), None)


def _setter(bid: str, path: str, optional: type | None = None):
    def set_value(value, spec):
        spec = copy.deepcopy(spec)
        i = _index(spec, bid)
        if i is not None:
            if optional is not None:
                value = parse_optional_number(value, optional)
            if isinstance(value, float) and value.is_integer() and path.split(".")[-1] not in (
                    "eps", "dropout", "rope_theta", "local_rope_theta", "init_std"):
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


def _adder(block_type: str, spec):
    """Insert a new block where it is valid: a layer after the last layer (above final_norm), anything else
    above lm_head (at the end when there is none)."""
    spec = copy.deepcopy(spec)
    block = with_ids({"blocks": [_as_json(block_type)]})["blocks"][0]
    blocks = spec["blocks"]
    types = [b.get("type") if isinstance(b, dict) else None for b in blocks]
    at = types.index("lm_head") if "lm_head" in types else len(blocks)
    if block_type in LAYER_TYPES and "final_norm" in types[:at]:
        at = types.index("final_norm")
    blocks.insert(at, block)
    return spec


def _apply_json(text: str, spec):
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
    return with_ids(data), "Applied. Problems, if any, are listed above and next to each block."


def _upload_json(file, spec):
    try:
        with open(file if isinstance(file, str) else file.name, "rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
        return _apply_json(raw.decode("utf-8"), spec)
    except UnicodeDecodeError:
        return spec, "⚠️ The file is not UTF-8 text; upload a .json spec."
