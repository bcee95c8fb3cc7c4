"""The app page. For now the Build tab: pick a preset, edit the spec, see problems and the estimate live."""

from __future__ import annotations

import gradio as gr

from .. import ModelSpec, SpecError, estimate, list_presets, load_preset
from ..estimate import human


def validate_spec(spec_json: str) -> tuple[str, str]:
    """Validate a spec given as JSON text: (problems as markdown, estimate as markdown)."""
    try:
        spec = ModelSpec.from_json(spec_json or "")
    except SpecError as e:
        return "**Problems**\n\n" + "\n".join(f"- {p}" for p in e.problems), ""
    e = estimate(spec)
    return "✅ The spec is valid.", (
        f"**{human(e.params)} parameters** · {human(e.flops_per_token_forward, 'FLOP')}/token forward · "
        f"training memory ≈ {human(e.train_total_bytes, 'B')} (batch 8) · "
        f"KV cache {human(e.kv_cache_bytes_per_token, 'B')}/token\n\n`{spec.summary()}`")


def preset_json(name: str) -> str:
    return load_preset(name).to_json()


def build_app() -> gr.Blocks:
    presets = list_presets()
    with gr.Blocks(title="SLM Blocks") as demo:
        gr.Markdown("# SLM Blocks\nBuild a small language model from blocks, train it, share it.")
        with gr.Tab("Build"):
            preset = gr.Dropdown(list(presets), value="tiny-char", label="Preset")
            spec = gr.Code(preset_json("tiny-char"), language="json", label="Spec (JSON)")
            problems = gr.Markdown()
            summary = gr.Markdown()
        preset.change(preset_json, preset, spec, api_name="preset_spec")
        spec.change(validate_spec, spec, [problems, summary], api_name="validate_spec")
        demo.load(validate_spec, spec, [problems, summary], api_visibility="private")
    return demo
