"""The app page: Build → Train → Generate → Compare → Share. Layout and wiring only; behaviour lives in
handlers.py (per session) and the engine. Named API endpoints: /validate_spec, /preview, /train, /stop,
/resume, /sample_at, /generate, /next_tokens, /export, /push, the Grow tab's /grow and /grow_table (grow_tab.py)
and the Share tab's deploy endpoints in deploy.py (see README).
"""

from __future__ import annotations

import os

import gradio as gr

from ..training.hub_access import set_process_default
from .build_tab import build_tab, preset_state, validate_spec
from .compare import Y_AXES
from .deploy import WEIGHTS, deploy_section
from .grow_tab import grow_tab, start_from_widget, with_start_from
from .guard import guard_launch
from .handlers import Handlers
from .state import Limits, SessionStore
from .train_form import VISIBILITY, build_form, collect, paths, visibility

# generations (and inspect views) at once: one per core, at most 4. Each runs on one thread, so more than the
# cores adds no throughput, only contention with everyone else's requests for the interpreter
WORKERS = max(1, min(4, os.cpu_count() or 1))
DEFAULT_PROMPT = "One morning, "  # in the style of the default built-in data (stories)
INTRO = """# 🧱 SLM Blocks
Build a small language model from blocks, train it and watch it learn, play with it, compare runs, and share
it as a standard `transformers` checkpoint. Start on **Build**, then press **Start training** on **Train**."""


def build_app(store: SessionStore | None = None) -> gr.Blocks:
    store = store or SessionStore(Limits.from_env())
    # a visitor's Hub reads are anonymous unless they sign in; the server's login only by a local opt-in
    set_process_default(None if store.limits.use_ambient_token else False)
    h = Handlers(store)
    on_spaces = bool(os.environ.get("SPACE_ID"))
    # delete_cache: Gradio's copies of uploads and outputs go after 2 h (runs copy what they use into the session)
    with gr.Blocks(title="SLM Blocks", delete_cache=(1800, 7200)) as demo:
        gr.Markdown(INTRO)
        spec_state = gr.State(preset_state("tiny-char"))
        with gr.Tab("Build"):
            spec_json = gr.Textbox(visible=False, render=False)  # the spec as JSON text, for /validate_spec, /train
            on_state, state_inputs, state_outputs = build_tab(spec_state, spec_json)
            spec_json.render()
            api_problems, api_summary = gr.Markdown(visible=False), gr.Markdown(visible=False)

        with gr.Tab("Train"):
            with gr.Row():
                with gr.Column(scale=1):
                    form = build_form(store.limits)
                    job_box = gr.JSON(visible=False)  # the job the form describes: the /train payload
                    start_from = start_from_widget(store)  # random weights, or a model to fine-tune (grow_tab.py)
                    preview_md = gr.Markdown("Pick data and a tokenizer to see what this run will train.",
                                             elem_id="train-preview")
                    with gr.Row():
                        start = gr.Button("Start training", variant="primary")
                        stop = gr.Button("Stop", variant="stop")
                    with gr.Row():
                        resume_run = gr.Dropdown([], label="Run to resume", allow_custom_value=True)
                        extra_steps = gr.Number(500, label="Extra steps", precision=0,
                                                info="added to the run's total; the learning rate continues "
                                                     "from where it was")
                        resume = gr.Button("Resume")
                with gr.Column(scale=2):
                    status = gr.Markdown("Ready. Pick data and press **Start training**.", elem_id="train-status")
                    stop_msg = gr.Markdown(elem_id="train-stop-msg")
                    with gr.Row():
                        with gr.Column(scale=3):
                            plot = gr.LinePlot(x="step", y="loss", color="split", title="Loss (train and validation)",
                                               height=300)
                        with gr.Column(scale=2):
                            timeline = gr.Slider(0, 1, value=0, step=1, label="Sample timeline (step)",
                                                 info="every eval's sample: drag to watch gibberish turn into words",
                                                 visible=False, interactive=True, elem_id="sample-timeline")
                            timeline_text = gr.Textbox(label="Sample at that step", lines=8, max_lines=12,
                                                       elem_id="sample-at-step")
                            sample_run = gr.Textbox(visible=False)  # /sample_at's run name (API only)
                    sample = gr.Textbox(label="Latest sample", lines=6, max_lines=10)
                    log = gr.Textbox(label="Log (newest first)", lines=8, max_lines=12, autoscroll=False,
                                     elem_id="train-log")

        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    model_pick = gr.Dropdown([], label="Model (this session's runs and imports)", allow_custom_value=True)
                    refresh = gr.Button("Refresh list", size="sm")
                    prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=3, max_length=store.limits.max_prompt_chars,
                                        info="the text the model continues (the built-in stories start like this)")
                    with gr.Row():
                        max_new = gr.Number(200, label="Max new tokens", precision=0)
                        temperature = gr.Slider(0, 2, 0.8, step=0.05, label="Temperature (0 = greedy)")
                    with gr.Row():
                        top_k = gr.Number(50, label="Top-k (0 = off)", precision=0)
                        top_p = gr.Slider(0.05, 1, 1.0, step=0.05, label="Top-p (1 = off)")
                    with gr.Row():
                        rep = gr.Slider(1.0, 2.0, 1.0, step=0.05, label="Repetition penalty")
                        # a Textbox: Gradio 6's Number turns empty into 0, which would fix the seed
                        gen_seed = gr.Textbox("", label="Seed (empty = random)", placeholder="random")
                    weights = gr.Radio(WEIGHTS, value="fp32", label="Weights (int8 / int4: quantized with torchao)")
                    gen_btn = gr.Button("Generate", variant="primary")
                with gr.Column(scale=2):
                    output = gr.Textbox(label="Output", lines=12, elem_id="gen-output")
                    with gr.Accordion("What does the model think comes next?", open=False):
                        next_btn = gr.Button("Show next-token probabilities for the prompt")
                        next_df = gr.Dataframe(headers=["token", "probability"], interactive=False)
                        next_msg = gr.Markdown()
                    with gr.Accordion("Attention maps", open=False):
                        with gr.Row():
                            layer = gr.Number(0, label="Attention layer", precision=0)
                            head = gr.Number(0, label="Head", precision=0)
                            attn_btn = gr.Button("Show attention")
                        attn_plot = gr.Plot()
                        attn_msg = gr.Markdown()

        with gr.Tab("Compare"):
            with gr.Row():
                everyone = gr.Checkbox(False, label="Show everyone's runs on this server (MLflow)")
                x_axis = gr.Radio(["step", "tokens", "time"], value="step", label="x axis")
                y_axis = gr.Radio(list(Y_AXES), value="loss", label="y axis",
                                  info="bits per character compares runs with different tokenizers")
                cmp_btn = gr.Button("Refresh")
            cmp_table = gr.Dataframe(interactive=False, elem_id="compare-table")
            cmp_curves = gr.Plot(label="Loss curves", show_label=False, elem_id="compare-curves")
            cmp_scatter = gr.ScatterPlot(x="params", y="bits/char", color="run", title="Held-out bits per character "
                                         "vs parameters", height=300, x_axis_format="~s", y_axis_format=".3f")
            cmp_msg = gr.Markdown("Locally, browse every run with `mlflow ui --backend-store-uri "
                                  f"{store.mlflow_uri}`.")
            gr.Markdown("### Class board\nEveryone's runs on this server, per data set, ranked by held-out **bits per "
                        "character** (lower is better; it compares models whatever their tokenizer), with each "
                        "model's parameter count beside it.")
            board = gr.Dataframe(interactive=False, elem_id="class-board")
            board_msg = gr.Markdown(elem_id="class-board-msg")

        with gr.Tab("Grow"):
            grow = grow_tab(store, h, spec_json, start_from)

        with gr.Tab("Share"):
            with gr.Row():
                share_run = gr.Dropdown([], label="Run to export", allow_custom_value=True)
                export_btn = gr.Button("Export (verified transformers folder)", variant="primary")
            export_msg = gr.Markdown(elem_id="export-msg")
            export_file = gr.File(label="Download the exported folder (.zip)", elem_id="export-file")
            with gr.Accordion("Model card preview", open=False):
                card = gr.Markdown(elem_id="card-preview")
            gr.Markdown("### Push to the Hugging Face Hub")
            if on_spaces:
                gr.LoginButton()
            with gr.Row():
                repo_id = gr.Textbox(label="Repository", placeholder="your-name/my-tiny-model")
                token = gr.Textbox(label="Your Hub token (write access)", type="password", visible=not on_spaces,
                                   info="used for this push only; the server's own login only with "
                                        "SLM_ALLOW_LOCAL_TOKEN=1")
                private = gr.Checkbox(True, label="Private")
                push_btn = gr.Button("Push")
            push_msg = gr.Markdown()
            gr.Markdown("### Import a model folder")
            import_files = gr.File(file_count="multiple", label="The .zip from Export, or the files of an exported "
                                   "or transformers folder (config.json, model.safetensors, tokenizer files)",
                                   elem_id="import-files")
            import_btn = gr.Button("Import")
            import_msg = gr.Markdown(elem_id="import-msg")
            deploy_section(store, share_run, model_pick)

        # ------------------------------------------------------------------ wiring
        form_paths = paths()
        form_inputs = [spec_json] + [form[p] for p in form_paths]
        show = [form[p] for p in VISIBILITY]
        for trigger in (form["data.source"], form["tokenizer.kind"]):
            trigger.change(visibility, [form["data.source"], form["tokenizer.kind"]], show, api_visibility="private")
        spec_json.change(validate_spec, spec_json, [api_problems, api_summary], api_name="validate_spec")
        train_outputs = [status, plot, sample, log, timeline]
        run_lists = [resume_run, model_pick, share_run]
        # the preview follows the choices that change what is trained (the slow part is cached per data choice);
        # the public /preview endpoint first, so that it keeps its name
        def preview_on(event, **api):
            event(collect, form_inputs, job_box, api_visibility="private") \
                .then(with_start_from, [job_box, start_from], job_box, api_visibility="private") \
                .then(h.preview, [job_box, form["files"]], preview_md, **(api or {"api_visibility": "private"}))

        preview_on(spec_json.change, api_name="preview")
        for path in ("data.source", "data.name", "data.hub_id", "tokenizer.kind", "tokenizer.vocab_size",
                     "tokenizer.name_or_path", "train.max_steps", "train.max_time", "train.batch_size"):
            preview_on(form[path].change)
        preview_on(form["files"].change)
        preview_on(start_from.change)  # fine-tuning trains the source's architecture, not the Build tab's
        start.click(lambda: "", None, stop_msg, api_visibility="private")  # no "Stopping …" from an earlier run
        start.click(collect, form_inputs, job_box, api_visibility="private") \
            .then(with_start_from, [job_box, start_from], job_box, api_visibility="private") \
            .then(h.train, [job_box, form["files"]], train_outputs, api_name="train", concurrency_limit=None) \
            .then(h.run_choices, None, resume_run, api_visibility="private") \
            .then(h.run_choices, None, model_pick, api_visibility="private") \
            .then(h.run_choices, None, share_run, api_visibility="private") \
            .then(grow["refresh"], grow["inputs"], grow["outputs"], api_visibility="private")
        start.click(h.run_choices, None, model_pick, api_visibility="private")
        stop.click(h.stop, None, stop_msg, api_name="stop")
        resume.click(lambda: "", None, stop_msg, api_visibility="private")
        # preprocess=False: text, lists or 1e400 as extra steps get a message naming the field, not Gradio's own
        resume.click(h.resume, [resume_run, extra_steps], train_outputs, api_name="resume", concurrency_limit=None,
                     preprocess=False)
        timeline.change(h.timeline_sample, timeline, timeline_text, api_visibility="private", preprocess=False)
        sample_run.submit(h.sample_at, [sample_run, timeline], timeline_text, api_name="sample_at",  # API only
                          preprocess=False)
        for target in run_lists:
            refresh.click(h.run_choices, None, target, api_visibility="private")
        refresh.click(grow["refresh"], grow["inputs"], grow["outputs"], api_visibility="private")
        for target in run_lists:  # a grown run is a run like any other
            grow["started"].then(h.run_choices, None, target, api_visibility="private")
        # preprocess=False: the handler checks every sampling value itself and names the field (Gradio's own
        # slider bound check would answer an API caller with "Value -1 is less than minimum value 0.")
        gen_btn.click(h.generate, [model_pick, prompt, max_new, temperature, top_k, top_p, rep, gen_seed, weights], output,
                      api_name="generate", concurrency_limit=WORKERS, preprocess=False)
        # the inspect views share 4 workers (one per session at a time, see guard.one_at_a_time); preprocess off:
        # text, lists or 1e400 as layer / head get a message naming the field
        next_btn.click(h.next_tokens, [model_pick, prompt], [next_df, next_msg], api_name="next_tokens",
                       concurrency_limit=WORKERS, concurrency_id="inspect")
        attn_btn.click(h.attention_map, [model_pick, prompt, layer, head], [attn_plot, attn_msg],
                       api_name="attention_map", concurrency_limit=WORKERS, concurrency_id="inspect", preprocess=False)
        cmp_btn.click(h.compare, [everyone, x_axis, y_axis], [cmp_table, cmp_curves, cmp_scatter, cmp_msg],
                      api_name="compare") \
            .then(h.redraw_legends, cmp_scatter, cmp_scatter, api_visibility="private") \
            .then(h.class_board, None, [board, board_msg], api_name="class_board")
        for choice in (everyone, x_axis, y_axis):  # a new choice redraws at once
            choice.input(h.compare, [everyone, x_axis, y_axis], [cmp_table, cmp_curves, cmp_scatter, cmp_msg],
                         api_visibility="private") \
                .then(h.redraw_legends, cmp_scatter, cmp_scatter, api_visibility="private")
        export_btn.click(h.export, share_run, [export_file, export_msg, card], api_name="export",
                         concurrency_limit=2)
        push_btn.click(h.push, [share_run, repo_id, token, private], push_msg, api_name="push", concurrency_limit=2,
                       concurrency_id="hub")
        import_btn.click(h.import_folder, import_files, [import_msg, model_pick], api_name="import_model",
                         concurrency_limit=2, concurrency_id="import")
        demo.load(on_state, state_inputs, state_outputs, api_visibility="private")

        def close_session(request: gr.Request):
            store.close(getattr(request, "session_hash", None))

        demo.unload(close_session)
    demo.store = store
    guard_launch(demo, store)  # launch() with the request caps, the upload cap and the sweeper (guard.py)
    return demo
