"""The Gradio app. Only wiring lives here: every model, data or training decision is in the engine."""

from .app import build_app

__all__ = ["build_app"]
