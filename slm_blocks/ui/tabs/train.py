"""The Train tab: what to train (the Build tab's spec, or a model to start from), on what data, for how long; then
the run itself, kept in sight while it trains.

Two columns: the left one scrolls (the Start / Stop bar stays at its top), the right one stays in view with the
run's status, step and time bars, loss curve, samples and log. The preview and the Start button describe the model
that will train and follow every choice that changes it, the Build tab's spec (`ctx.spec`) included. API: /train
(streamed), /preview, /stop, /resume, /sample_at.
"""

from __future__ import annotations

import gradio as gr

from ...training.data import is_hub_id
from ..context import AppContext, emitting, finished, run_names
from ..grow_actions import describe_start_from
from ..train_form import SCRATCH, VISIBILITY, build_form, collect_job, paths, visibility
from ..train_view import loss_frame

PREVIEW_FIELDS = ("data.source", "data.name", "data.hub_id", "tokenizer.kind", "tokenizer.vocab_size",
                  "tokenizer.name_or_path", "train.max_steps", "train.max_time", "train.batch_size", "train.seq_len")
LOSS_IN_WORDS = (
    "<small>**Reading the loss.** It is the average surprise per token in *nats*: e^loss is the *perplexity*, about "
    "how many tokens the model is still choosing between (a char model starts near its vocabulary size, ~65). "
    "**Bits per character** divides by how many characters a token holds and by ln 2, so runs with different "
    "tokenizers compare. **Validation** is text the model never trains on: while it falls with the training loss "
    "the model is learning; when it rises while the training loss keeps falling, it is memorising its data "
    "(overfitting).</small>")


def create(ctx: AppContext) -> None:
    h, store = ctx.actions, ctx.store
    with gr.Row(elem_id="train-layout"):
        with gr.Column(scale=5, elem_id="train-left"):
            with gr.Row(elem_id="train-actions"):
                start = gr.Button("Start training", variant="primary", elem_id="train-start", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop", scale=1)
            preview = gr.Markdown("Pick data and a tokenizer to see what this run will train.",
                                  elem_id="train-preview")
            refresh = gr.Button("↻ Update the preview", size="sm", elem_id="train-preview-refresh")
            start_from = gr.Dropdown([SCRATCH], value=SCRATCH, label="Start from", allow_custom_value=True,
                                     interactive=True, elem_id="train-start-from",
                                     info="a finished run or a Hub id 'owner/name' to fine-tune: the run keeps that "
                                          "model's architecture and tokenizer (the Build tab's blocks and the "
                                          "tokenizer choice are not used)")
            start_note = gr.Markdown(elem_id="train-start-from-note")
            form = build_form(store.limits)
            job_payload = gr.JSON(visible=False)  # the /train and /preview API argument (filled by `collect_job`)
            gr.Markdown("### Resume a stopped or finished run")
            with gr.Row():
                resume_run = gr.Dropdown([], label="Run to resume", allow_custom_value=True, interactive=True)
                extra_steps = gr.Number(500, label="Extra steps", precision=0,
                                        info="added to the run's total; the learning rate continues from where it was")
            resume_plan = gr.Markdown(elem_id="train-resume-plan")
            resume = gr.Button("Resume")
        with gr.Column(scale=7, elem_id="train-right"):
            status = gr.Markdown("Ready. Pick data and press **Start training**.", elem_id="train-status")
            plot = gr.LinePlot(loss_frame([]), x="step", y="loss", color="split", title="Loss (train and validation)",
                               height=300, x_axis_format="d", y_axis_format=".2f", elem_id="train-plot")
            with gr.Row():
                with gr.Column(scale=3):
                    sample = gr.Textbox(label="Latest sample", lines=6, max_lines=10)
                with gr.Column(scale=2):
                    timeline = gr.Slider(0, 1, value=0, step=1, label="Sample timeline (step)",
                                         info="every eval's sample: drag to watch gibberish turn into words",
                                         visible=False, interactive=True, elem_id="sample-timeline")
                    timeline_text = gr.Textbox(label="Sample at that step", lines=6, max_lines=10,
                                               elem_id="sample-at-step")
            log = gr.Textbox(label="Log (newest first)", lines=6, max_lines=10, autoscroll=False, elem_id="train-log")
            gr.Markdown(LOSS_IN_WORDS)

    values = [form[p] for p in paths()]
    job_inputs = [ctx.spec, start_from, *values]
    show = [form[p] for p in VISIBILITY]
    for trigger in (form["data.source"], form["tokenizer.kind"]):
        trigger.change(visibility, [form["data.source"], form["tokenizer.kind"]], show, api_visibility="private")

    # the preview and the Start button follow everything that changes what would train, the Build tab's spec too
    triggers = [ctx.spec.change, start_from.change, form["files"].change] + \
        [form[p].change for p in PREVIEW_FIELDS if p in form]
    gr.on(triggers, collect_job, job_inputs, job_payload, api_visibility="private", show_progress="hidden") \
        .then(h.preview_view, [job_payload, form["files"]], [preview, start], api_visibility="private",
              show_progress="hidden")
    ctx.on_load(collect_job, job_inputs, job_payload, then=(h.preview_view, [job_payload, form["files"]],
                                                            [preview, start]))
    refresh.click(collect_job, job_inputs, job_payload, api_visibility="private") \
        .then(h.preview, [job_payload, form["files"]], preview, api_name="preview")
    start_from.change(describe_start_from(store), start_from, start_note, api_visibility="private")

    outputs = [status, plot, sample, log, timeline]
    ctx.on_load(h.attach, None, outputs)  # a reopened page shows its run, still streaming if it trains
    started = start.click(collect_job, job_inputs, job_payload, api_visibility="private") \
        .then(h.train, [job_payload, form["files"]], outputs, api_name="train", concurrency_limit=None)
    ctx.after(started)
    stop.click(h.stop, None, status, api_name="stop")
    # preprocess=False: text, lists or 1e400 as extra steps get a message naming the field, not Gradio's own
    resumed = resume.click(h.resume, [resume_run, extra_steps], outputs, api_name="resume", concurrency_limit=None,
                           preprocess=False)
    ctx.after(resumed)
    for trigger in (resume_run.change, extra_steps.change, ctx.runs.change):
        trigger(h.resume_plan, [resume_run, extra_steps], resume_plan, api_visibility="private",
                show_progress="hidden")
    timeline.change(h.timeline_sample, timeline, timeline_text, api_visibility="private", preprocess=False)
    gr.api(emitting(h.sample_at), api_name="sample_at")  # (run name, step) -> the sample at or before it

    ctx.follow_runs(resume_run, run_names)
    ctx.follow_runs(start_from, lambda records: [SCRATCH] + finished(records),
                    keep=lambda value: value == SCRATCH or is_hub_id(value), follow_selected=False)
