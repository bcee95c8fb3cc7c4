"""The Generate tab: stream text from a run or an imported model, and see what the model does with the prompt:
the next-token probabilities as bars that the sampling settings reshape (a click appends that token), and every
attention head of a layer side by side; for mixtures of experts, which experts each token goes to, with the
memory generation keeps (a KV cache per token, a fixed state for Mamba2 / convolution layers). The model picker
follows the run list (`ctx.runs`). API: /generate (streamed), /next_tokens, /attention_map."""

from __future__ import annotations

import gradio as gr

from ..attention_view import BARS_JS, HEADS_JS
from ..context import AppContext, model_names
from ..deploy import WEIGHTS

DEFAULT_PROMPT = "One morning, "  # in the style of the default built-in data (stories)
# generations (and inspect views) at once: one per core, at most 4. Each runs on one thread, so more than the
# cores adds no throughput, only contention with everyone else's requests for the interpreter


def workers() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))


def create(ctx: AppContext) -> None:
    h, limits = ctx.actions, ctx.store.limits
    with gr.Row():
        with gr.Column(scale=1):
            model_pick = gr.Dropdown([], label="Model (your runs and imports)", allow_custom_value=True,
                                     interactive=True, elem_id="gen-model")
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=3, max_length=limits.max_prompt_chars,
                                info="the text the model continues (the built-in stories start like this)",
                                elem_id="gen-prompt")
            with gr.Row():
                max_new = gr.Number(200, label="Max new tokens", precision=0)
                temperature = gr.Slider(0, 2, 0.8, step=0.05, label="Temperature (0 = greedy)")
            with gr.Row():
                top_k = gr.Number(50, label="Top-k (0 = off)", precision=0)
                top_p = gr.Slider(0.05, 1, 1.0, step=0.05, label="Top-p (1 = off)")
            with gr.Row():
                rep = gr.Slider(1.0, 2.0, 1.0, step=0.05, label="Repetition penalty")
                # a Textbox: Gradio 6's Number turns empty into 0, which would fix the seed
                seed = gr.Textbox("", label="Seed (empty = random)", placeholder="random")
            weights = gr.Radio(WEIGHTS, value="fp32", label="Weights (int8 / int4: quantized with torchao)")
            gen_btn = gr.Button("Generate", variant="primary")
        with gr.Column(scale=2):
            output = gr.Textbox(label="Output", lines=10, elem_id="gen-output")
            with gr.Accordion("What does the model think comes next?", open=True):
                bars = gr.HTML(js_on_load=BARS_JS, elem_id="next-bars")
                with gr.Accordion("As a table (the /next_tokens API)", open=False):
                    next_btn = gr.Button("Show next-token probabilities for the prompt")
                    next_df = gr.Dataframe(headers=["token", "probability"], interactive=False)
                    next_msg = gr.Markdown()
            with gr.Accordion("Attention: every head of a layer", open=False):
                with gr.Row():
                    layer = gr.Number(0, label="Attention layer", precision=0)
                    attn_btn = gr.Button("Show attention")
                heads = gr.HTML(js_on_load=HEADS_JS, elem_id="attention-heads")
            with gr.Accordion("Experts and memory per token", open=False):
                experts_btn = gr.Button("Show which experts each token goes to")
                experts_html = gr.HTML(elem_id="expert-view")

    n = workers()
    # preprocess=False: the handler checks every sampling value itself and names the field (Gradio's own slider
    # bound check would answer an API caller with "Value -1 is less than minimum value 0.")
    gen_btn.click(h.generate, [model_pick, prompt, max_new, temperature, top_k, top_p, rep, seed, weights], output,
                  api_name="generate", concurrency_limit=n, preprocess=False)
    # the bars follow the prompt and the settings that filter what can be sampled
    shape = [model_pick, prompt, temperature, top_k, top_p]
    gr.on([model_pick.change, prompt.change, temperature.change, top_k.change, top_p.change], h.next_bars, shape,
          bars, api_visibility="private", concurrency_limit=n, concurrency_id="inspect", show_progress="hidden",
          trigger_mode="always_last")
    bars.click(h.append_token, [model_pick, prompt], prompt, api_visibility="private")
    # the inspect views share a worker per core (one per session at a time, see guard.one_at_a_time)
    next_btn.click(h.next_tokens, [model_pick, prompt], [next_df, next_msg], api_name="next_tokens",
                   concurrency_limit=n, concurrency_id="inspect")
    attn_btn.click(h.attention_heads, [model_pick, prompt, layer], heads, api_visibility="private",
                   concurrency_limit=n, concurrency_id="inspect")
    experts_btn.click(h.experts, [model_pick, prompt], experts_html, api_visibility="private", concurrency_limit=n,
                      concurrency_id="inspect")
    gr.api(h.attention_map, api_name="attention_map", concurrency_limit=n, concurrency_id="inspect")
    ctx.follow_runs(model_pick, model_names)
