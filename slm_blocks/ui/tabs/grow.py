"""The Grow tab: make a model from another one (fine-tune, distill, prune + heal), with a before/after table and
the kd / ce curves. The distilled student is the Build tab's spec (`ctx.spec`); the tab's run pickers follow the
run list (`ctx.runs`). What it does: ui/grow_actions.py. API: /grow (streamed), /grow_table."""

from __future__ import annotations

import html
import json

import gradio as gr

from ...model.estimate import estimate, human
from ...training.data import builtin_datasets, is_hub_id
from ..context import AppContext, finished, run_names
from ..grow_actions import EXPLAIN, INTRO, SOURCE_DATA, TABLE_COLUMNS, TECHNIQUES, Grow, curves_frame
from ..spec_view import check, clean


def student_line(technique: str, spec: dict | None) -> str:
    """What the distilled student is: the Build tab's blocks, as they are now."""
    if technique != "Distill":
        return ""
    parsed, problems = check(spec) if isinstance(spec, dict) else (None, ["no spec"])
    if parsed is None:
        return "**Student** (the Build tab's blocks): fix the Build tab's problems first"
    return (f"**Student** (the Build tab's blocks): {html.escape(parsed.summary())}, "
            f"{human(estimate(parsed).params)} parameters before its vocabulary becomes the teacher's")


def spec_text(spec: dict | None) -> str:
    return json.dumps(clean(spec)) if isinstance(spec, dict) else ""


def create(ctx: AppContext) -> None:
    g = Grow(ctx.store, ctx.actions)
    gr.Markdown(INTRO)
    with gr.Row():
        with gr.Column(scale=1):
            technique = gr.Radio(TECHNIQUES, value="Fine-tune", label="Technique", elem_id="grow-technique")
            explain = gr.Markdown(EXPLAIN["Fine-tune"], elem_id="grow-explain")
            source = gr.Dropdown([], label="Source / teacher (a finished run, or a Hub id)", allow_custom_value=True,
                                 interactive=True, elem_id="grow-source")
            data = gr.Dropdown([SOURCE_DATA] + [f"builtin:{k}" for k in builtin_datasets()], value=SOURCE_DATA,
                               label="Data to learn from", interactive=True, elem_id="grow-data",
                               info="the source run's own data, or a built-in set (a Hub model: the stories)")
            run_name = gr.Textbox("", label="New run name", placeholder="automatic", elem_id="grow-name")
            steps = gr.Number(200, label="Steps", precision=0, info="fine-tuning, distillation or healing steps")
            with gr.Group(visible=False) as distill_box:
                alpha = gr.Slider(0, 1, 0.5, step=0.05, label="α: the teacher's share of the loss",
                                  info="0 = plain training, 1 = follow only the teacher")
                temperature = gr.Slider(0.5, 8, 2.0, step=0.5, label="Temperature T",
                                        info="higher = softer teacher distribution, near misses count more")
            student = gr.Markdown(elem_id="grow-student")
            with gr.Group(visible=False) as prune_box:
                target = gr.Slider(10, 95, 70, step=5, label="Target size (% of the source's parameters)",
                                   info="tries depth and head counts, sizes the MLP to fit, keeps the shape with "
                                        "the lowest loss")
                with gr.Accordion("Or choose exactly what to cut", open=False):
                    drop = gr.Number(0, label="Drop layers", precision=0)
                    mlp_keep = gr.Slider(0.05, 1, 1.0, step=0.05, label="MLP neurons kept (share)")
                    heads = gr.Number(0, label="Heads kept per layer (0 = all)", precision=0)
            student_spec = gr.Textbox(visible=False)  # the /grow API's student spec (filled from ctx.spec)
            go = gr.Button("Grow", variant="primary", elem_id="grow-start")
        with gr.Column(scale=2):
            status = gr.Markdown("Pick a source and a technique, then press **Grow**.", elem_id="grow-status")
            curves = gr.LinePlot(curves_frame([]), x="step", y="loss", color="split", height=300, x_axis_format="d",
                                 y_axis_format=".2f", elem_id="grow-curves",
                                 title="Loss: train (total = α·kd + (1−α)·ce), kd (teacher), ce (data), validation")
            table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, wrap=True, elem_id="grow-table",
                                 label="Before / after (same held-out text; tokens/s as a ratio to the first row)")
            with gr.Row():
                table_run = gr.Dropdown([], label="Grown run", allow_custom_value=True, interactive=True)
                table_btn = gr.Button("Before / after")
            table_msg = gr.Markdown()
            log_box = gr.Textbox(label="Log (newest first)", lines=6, max_lines=10, autoscroll=False)

    def on_technique(t):
        return EXPLAIN.get(t, ""), gr.update(visible=t != "Fine-tune"), gr.update(visible=t == "Prune + heal"), \
            gr.update(visible=t == "Fine-tune")

    technique.change(on_technique, technique, [explain, distill_box, prune_box, data], api_visibility="private")
    for trigger in (technique.change, ctx.spec.change):  # the student is the Build tab's spec as it is now
        trigger(student_line, [technique, ctx.spec], student, api_visibility="private", show_progress="hidden")
    inputs = [technique, source, run_name, steps, alpha, temperature, target, drop, mlp_keep, heads, student_spec,
              data]
    started = go.click(spec_text, ctx.spec, student_spec, api_visibility="private") \
        .then(g.grow, inputs, [status, curves, log_box, table], api_name="grow", concurrency_limit=None,
              preprocess=False)
    ctx.after(started)
    table_btn.click(g.table, table_run, [table, curves, table_msg], api_name="grow_table")
    ctx.follow_runs(source, finished, keep=is_hub_id)
    ctx.follow_runs(table_run, run_names)

