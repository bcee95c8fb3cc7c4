"""One widget factory for every typed field the app edits: the Build tab's spec fields and the Train form's
settings, both declared with model/fields.py's setting(). The type hint picks the widget; the metadata gives its
label, help and, for an optional field, what leaving it empty means (shown as the placeholder "auto: ...")."""

from __future__ import annotations

import typing

import gradio as gr

from ..model.fields import unwrap_optional


def field_widget(hint, meta: dict, value, *, label: str, key: str | None = None, elem_id: str | None = None,
                 visible: bool = True, radio: bool = False, boxed: bool = False):
    """One input for one field. `radio`: a choice as radio buttons (a dropdown otherwise); `boxed`: a checkbox in a
    Column of its own (Gradio 6's Checkbox ignores min_width and gets squeezed in a full Row). Every widget says
    interactive=True: Gradio 6 makes a component created inside gr.render read-only unless told otherwise (a field
    that starts with a value looked editable but ignored typing and clicks)."""
    base, optional = unwrap_optional(hint)
    common = dict(label=label, info=meta.get("help") or None, interactive=True, visible=visible)
    if key is not None:
        common.update(key=key, preserved_by_key=None)
    if elem_id is not None:
        common["elem_id"] = elem_id
    if typing.get_origin(base) is typing.Literal:
        choices = list(typing.get_args(base))
        return gr.Radio(choices, value=value, **common) if radio else \
            gr.Dropdown(choices, value=value, min_width=140, **common)
    if base is bool:
        if boxed:
            with gr.Column(min_width=140, key=None if key is None else f"col-{key}"):
                return gr.Checkbox(value=bool(value), **common)
        return gr.Checkbox(value=bool(value), **common)
    if optional and base in (int, float):
        # a Textbox, not a Number: Gradio 6's Number shows (and sends back) 0 for an empty value, and empty means
        # "derived" here
        shown = "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        return gr.Textbox(value=shown, placeholder=f"auto: {meta.get('empty') or 'default'}", min_width=140,
                          **common)
    if base in (int, float):
        return gr.Number(value=value, precision=0 if base is int else None, min_width=140, **common)
    return gr.Textbox(value="" if value is None else value, **common)
