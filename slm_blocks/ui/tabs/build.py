"""The Build tab: a preset picker, an editable block list, live validation, estimate and a diagram. It owns the
app's spec (`ctx.spec`): every edit writes it, and the other tabs follow its `.change`. The editing itself (pure
functions of the spec) and the views live in ui/spec_view.py. API: /validate_spec."""

from __future__ import annotations

import html
import json
import typing
from dataclasses import fields

import gradio as gr

from ... import BLOCK_TYPES, ModelSpec, block_help, list_presets
from ..context import AppContext
from ..spec_view import (
    GLOBALS, DIAGRAM_JS, adder, apply_json, block_detail, block_problems, check, clean, diagram, field_groups,
    get_path, global_setter, layout_key, make_widget, mover, duplicator, remover_undoable, setter, summary, undo,
    undoable, upload_json, switch_preset, validate_spec,
)


def create(ctx: AppContext) -> None:
    spec_state = ctx.spec
    presets = list_presets()
    last_valid = gr.State(None)  # the last spec without problems: its figures stay visible, marked stale
    undo_stack = gr.State([])  # [(button label, spec, preset name)], newest last: Remove, preset switch, Apply JSON
    selected = gr.State(None)  # the block id clicked in the diagram
    layout = gr.State(None)  # what the block list is drawn from (layout_key): it is redrawn when that changes
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
            problems_md = gr.Markdown(elem_id="build-problems", render=False)

            # Redrawn only when blocks are added, removed or moved (or a choice hides or shows fields), not on every
            # field edit: a redraw rebuilds every widget of every block (seconds on a big spec), and a field typed
            # into during a redraw was lost.
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
                        for group, items in (field_groups(btype, block) if btype in BLOCK_TYPES else []):
                            with gr.Row(key=f"fields-{bid}-{group}", elem_classes=["field-row"]):
                                for path, hint, meta in items:
                                    w = make_widget(path, hint, meta, get_path(block, path), key=f"{bid}-{path}")
                                    event = w.blur if isinstance(w, (gr.Number, gr.Textbox)) else w.input
                                    event(setter(bid, path, hint), [w, spec_state], spec_state,
                                          api_visibility="private", show_progress="hidden")
                        # always visible (an empty Markdown is 0 px high) and updated by value only: a gr.update()
                        # makes Gradio 6.31 swap in an unrendered copy of the component, and a redraw running at that
                        # moment failed ("'Markdown' object has no attribute 'page'"), freezing the block list
                        problem_boxes.append(gr.Markdown(block_problems(problems, i), key=f"problems-{bid}"))
                    up.click(mover(bid, -1), spec_state, spec_state, api_visibility="private")
                    down.click(mover(bid, +1), spec_state, spec_state, api_visibility="private")
                    dup.click(duplicator(bid), spec_state, spec_state, api_visibility="private")
                    rm.click(remover_undoable(bid), [spec_state, undo_stack, preset],
                             [spec_state, undo_stack, undo_btn], api_visibility="private")

                def show_problems(spec):  # the problems under each block, without a redraw
                    _, problems = check(spec)
                    return [block_problems(problems, i) for i in range(len(problem_boxes))]

                # the problems summary changes whenever any block's problems do (a listener on the State itself,
                # inside a render, stopped every State update of the page in Gradio 6.31)
                problems_md.change(show_problems, spec_state, problem_boxes, api_visibility="private",
                                   show_progress="hidden")

            with gr.Row():
                add_type = gr.Dropdown(list(BLOCK_TYPES), value="transformer", label="Block type to add", scale=2,
                                       info="layers go after the last layer; other blocks above lm_head")
                add_btn = gr.Button("Add block", scale=1)
            add_help = gr.Markdown(block_help("transformer"))
        with gr.Column(scale=2):
            problems_md.render()
            estimate_md = gr.Markdown(elem_id="build-estimate")
            diagram_html = gr.HTML(js_on_load=DIAGRAM_JS, elem_id="build-diagram")
            detail_md = gr.Markdown(block_detail({}, None), elem_id="build-block-detail",
                                    elem_classes=["fit-table"])
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
        text = json.dumps(clean(spec), indent=2)
        return [p, e, diagram(spec, problems, chosen), block_detail(spec, chosen), text, last, layout_key(spec),
                *[spec.get(name) for name in GLOBALS]]

    def on_click(spec, evt: gr.EventData):
        bid = (getattr(evt, "_data", None) or {}).get("block")
        _, problems = check(spec)
        return bid, diagram(spec, problems, bid), block_detail(spec, bid)

    inputs = [spec_state, last_valid, selected]
    outputs = [problems_md, estimate_md, diagram_html, detail_md, code, last_valid, layout, *globals_.values()]
    spec_state.change(on_state, inputs, outputs, api_visibility="private", show_progress="hidden")
    ctx.on_load(on_state, inputs, outputs)
    diagram_html.click(on_click, spec_state, [selected, diagram_html, detail_md], api_visibility="private",
                       show_progress="hidden")
    # .input, not .change: Undo sets the dropdown back without loading that preset again
    preset.input(switch_preset, [preset, spec_state, undo_stack, preset_info],
                 [spec_state, preset_info, undo_stack, undo_btn], api_visibility="private")
    undo_btn.click(undo, undo_stack, [spec_state, preset, preset_info, undo_stack, undo_btn], api_visibility="private")
    for name, widget in globals_.items():
        event = widget.blur if isinstance(widget, gr.Number) else widget.input
        event(global_setter(name), [widget, spec_state], spec_state, api_visibility="private",
              show_progress="hidden")
    add_type.change(block_help, add_type, add_help, api_visibility="private")
    add_btn.click(adder, [add_type, spec_state], spec_state, api_visibility="private")
    apply_btn.click(undoable(apply_json), [code, spec_state, undo_stack, preset],
                    [spec_state, json_msg, undo_stack, undo_btn], api_visibility="private")
    upload.upload(undoable(upload_json), [upload, spec_state, undo_stack, preset],
                  [spec_state, json_msg, undo_stack, undo_btn], api_visibility="private")
    gr.api(validate_spec, api_name="validate_spec")  # the spec as JSON text -> (problems or ✅, estimate)
