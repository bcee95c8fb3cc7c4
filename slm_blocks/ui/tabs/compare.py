"""The Compare tab: this session's runs (or everyone's on this server) side by side, and the class board. It loads
when it is opened and redraws at once when a choice changes. The data: ui/compare.py. API: /compare, /class_board."""

from __future__ import annotations

import gradio as gr

from ..compare import BOARD_COLUMNS, BOARD_WIDTHS, COMPARE_COLUMNS, COMPARE_WIDTHS, Y_AXES
from ..context import AppContext


def create(ctx: AppContext, tab: gr.Tab) -> None:
    h, store = ctx.actions, ctx.store
    with gr.Row():
        everyone = gr.Checkbox(False, label="Show everyone's runs on this server (MLflow)")
        x_axis = gr.Radio(["step", "tokens", "time"], value="step", label="x axis")
        y_axis = gr.Radio(list(Y_AXES), value="loss", label="y axis",
                          info="bits per character compares runs with different tokenizers")
        refresh = gr.Button("Refresh")
    table = gr.Dataframe(headers=COMPARE_COLUMNS, column_widths=COMPARE_WIDTHS, interactive=False, wrap=True,
                         elem_id="compare-table", elem_classes=["fit-table"])
    curves = gr.Plot(label="Loss curves", show_label=False, elem_id="compare-curves")
    scatter = gr.ScatterPlot(x="params", y="bits/char", color="run", title="Held-out bits per character vs parameters",
                             height=300, x_axis_format=".3~s", y_axis_format=".3f", elem_id="compare-scatter")
    message = gr.Markdown("Locally, browse every run with `mlflow ui --backend-store-uri "
                          f"{store.mlflow_uri}`.")
    gr.Markdown("### Class board\nEveryone's runs on this server, per data set, ranked by held-out **bits per "
                "character** (lower is better; it compares models whatever their tokenizer), with each model's "
                "parameter count beside it. A run is named by its learner's session (the first letters of it).")
    board = gr.Dataframe(headers=BOARD_COLUMNS, column_widths=BOARD_WIDTHS, interactive=False, wrap=True,
                         elem_id="class-board", elem_classes=["fit-table"])
    board_msg = gr.Markdown(elem_id="class-board-msg")

    outputs = [table, curves, scatter, message]
    choices = [everyone, x_axis, y_axis]
    # the named endpoints first: an unnamed event of the same function registered earlier would take the name
    clicked = refresh.click(h.compare, choices, outputs, api_name="compare")
    opened = tab.select(h.compare, choices, outputs, api_visibility="private")  # the tab loads when it is opened
    for event in (clicked, opened):
        event.then(h.redraw_legends, scatter, scatter, api_visibility="private") \
            .then(h.class_board, None, [board, board_msg], api_name="class_board" if event is clicked else None,
                  api_visibility="public" if event is clicked else "private")
    for choice in choices:  # a new choice redraws at once
        choice.input(h.compare, choices, outputs, api_visibility="private") \
            .then(h.redraw_legends, scatter, scatter, api_visibility="private")
