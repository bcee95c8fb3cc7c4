"""The Share tab: export a run as a verified transformers folder (with its model card), push it to the Hub,
import a model folder; then "Quantize & deploy": the size-speed-quality table, int8 / int4 and GGUF exports, GGUF
import. Its run picker follows the run list (`ctx.runs`); an import joins that list (Generate can pick it). What
it does: ui/handlers.py (export, push, import) and ui/deploy.py. API: /export, /push, /import_model,
/compare_weights, /export_quantized, /export_gguf, /import_gguf."""

from __future__ import annotations

import os

import gradio as gr

from ..context import AppContext, finished
from ..deploy import INTRO, TABLE_COLUMNS, TABLE_WIDTHS, Deploy


def create(ctx: AppContext) -> None:
    h, store = ctx.actions, ctx.store
    on_spaces = bool(os.environ.get("SPACE_ID"))
    with gr.Row():
        run = gr.Dropdown([], label="Run to export", allow_custom_value=True, interactive=True, elem_id="share-run")
        export_btn = gr.Button("Export (verified transformers folder)", variant="primary")
    export_msg = gr.Markdown(elem_id="export-msg")
    export_file = gr.File(label="Download the exported folder (.zip)", elem_id="export-file")
    with gr.Accordion("Model card preview", open=False):
        card = gr.Markdown(elem_id="card-preview", elem_classes=["fit-table"])
    gr.Markdown("### Push to the Hugging Face Hub")
    if on_spaces:
        gr.LoginButton()
    with gr.Row():
        repo_id = gr.Textbox(label="Repository", placeholder="your-name/my-tiny-model")
        token = gr.Textbox(label="Your Hub token (write access)", type="password", visible=not on_spaces,
                           info="used for this push only; the server's own login only with SLM_ALLOW_LOCAL_TOKEN=1")
        private = gr.Checkbox(True, label="Private")
        push_btn = gr.Button("Push")
    push_msg = gr.Markdown()
    gr.Markdown("### Import a model folder")
    import_files = gr.File(file_count="multiple", label="The .zip from Export, or the files of an exported or "
                           "transformers folder (config.json, model.safetensors, tokenizer files)", elem_id="import-files")
    import_btn = gr.Button("Import")
    import_msg = gr.Markdown(elem_id="import-msg")

    d = Deploy(store)
    gr.Markdown(INTRO)
    with gr.Row():
        group = gr.Dropdown(["default", "16", "32", "64", "128", "256"], value="default",
                            label="Group size (int8 default: per row; int4 default: 32)")
        compare_btn = gr.Button("Compare fp32 / bf16 / int8 / int4 / GGUF q8_0")
    table = gr.Dataframe(headers=TABLE_COLUMNS, column_widths=TABLE_WIDTHS, interactive=False, wrap=True,
                         elem_id="quantize-table",
                         elem_classes=["fit-table"])
    table_msg = gr.Markdown()
    with gr.Row():
        with gr.Column():
            qweights = gr.Radio(["int8", "int4"], value="int8", label="Quantized transformers export")
            qexport_btn = gr.Button("Export quantized folder")
            qfile = gr.File(label="Quantized folder (.zip)")
            qmsg = gr.Markdown()
        with gr.Column():
            gquant = gr.Radio(["q8_0", "f16"], value="q8_0", label="GGUF for llama.cpp / Ollama")
            gexport_btn = gr.Button("Export GGUF")
            gfile = gr.File(label="GGUF file")
            gzip = gr.File(label="GGUF + Modelfile + model card (.zip)")
            gmsg = gr.Markdown()
    gr.Markdown("### Import a GGUF file")
    gguf_in = gr.File(label="A .gguf file (GPT-2, Llama, Qwen3 or Gemma 3 architecture)", file_types=[".gguf"])
    gimport_btn = gr.Button("Import GGUF")
    gimport_msg = gr.Markdown()

    export_btn.click(h.export, run, [export_file, export_msg, card], api_name="export", concurrency_limit=2)
    push_btn.click(h.push, [run, repo_id, token, private], push_msg, api_name="push", concurrency_limit=2,
                   concurrency_id="hub")
    ctx.after(import_btn.click(h.import_folder, import_files, import_msg, api_name="import_model",
                               concurrency_limit=2, concurrency_id="import"))
    # preprocess=False: the handlers check every choice themselves and answer with a message naming the field
    compare_btn.click(d.compare, [run, group], [table, table_msg], api_name="compare_weights", concurrency_limit=2,
                      preprocess=False)
    qexport_btn.click(d.export_quantized, [run, qweights, group], [qfile, qmsg], api_name="export_quantized",
                      concurrency_limit=2, preprocess=False)
    gexport_btn.click(d.export_gguf, [run, gquant], [gfile, gzip, gmsg], api_name="export_gguf", concurrency_limit=2,
                      preprocess=False)
    # imports run in a worker with a time limit (one per session at a time): two may run at once
    ctx.after(gimport_btn.click(d.import_gguf, gguf_in, gimport_msg, api_name="import_gguf", concurrency_limit=2,
                                concurrency_id="import"))
    ctx.follow_runs(run, finished)
