"""The app page: the tabs in order, each laid out and wired by its own module (ui/tabs/), around the shared state
of ui/context.py. Behaviour lives in the actions (ui/handlers.py, grow_actions.py, deploy.py) and the engine."""

from __future__ import annotations

import functools

import gradio as gr

from ..training.hub_access import set_process_default
from . import workspace_view
from .context import AppContext
from .guard import guard_launch
from .handlers import Handlers
from .spec_view import preset_state
from .state import Limits, SessionStore
from .style import CSS
from .tabs import build, compare, generate, grow, share, train

INTRO = """# 🧱 SLM Blocks
Build a small language model from blocks, train it and watch it learn, play with it, compare runs, and share
it as a standard `transformers` checkpoint. Start on **Build**, then press **Start training** on **Train**."""


def build_app(store: SessionStore | None = None) -> gr.Blocks:
    store = store or SessionStore(Limits.from_env())
    # a visitor's Hub reads are anonymous unless they sign in; the server's login only by a local opt-in
    set_process_default(None if store.limits.use_ambient_token else False)
    # delete_cache: Gradio's copies of outputs go after 2 h (uploads are deleted once a session has copied them)
    with gr.Blocks(title="SLM Blocks", delete_cache=(1800, 7200)) as demo:
        gr.Markdown(INTRO)
        ctx = AppContext(store, Handlers(store), spec=gr.State(preset_state("tiny-char")), runs=gr.State({}),
                         selected=gr.State(None))
        bound = workspace_view.create(demo, store, ctx)  # the page's workspace, before anything reads it
        with gr.Tab("Build"):
            build.create(ctx)
        tabs = {}
        for name, tab_module in (("Train", train), ("Generate", generate), ("Compare", compare), ("Grow", grow),
                                 ("Share", share)):
            with gr.Tab(name) as tabs[name]:
                tab_module.create(ctx, tabs[name]) if tab_module is compare else tab_module.create(ctx)
            tabs[name].select(ctx.refresh_runs, None, [ctx.runs, ctx.selected], api_visibility="private",
                              show_progress="hidden")  # a tab's run pickers are current when it is opened
        bound.then(ctx.refresh_runs, None, [ctx.runs, ctx.selected], api_visibility="private")
        for fn, inputs, outputs, then in ctx.loads:
            loaded = bound.then(fn, inputs, outputs, api_visibility="private")
            if then is not None:
                loaded.then(*then, api_visibility="private", show_progress="hidden")

        def close_session(request: gr.Request):  # a workspace stays (trainings go on); a tab's session closes
            store.close(getattr(request, "session_hash", None))

        demo.unload(close_session)
    demo.store = store
    launch = demo.launch
    demo.launch = functools.wraps(launch)(lambda *a, **kw: launch(*a, **{"css": CSS, **kw}))  # the app's look
    guard_launch(demo, store)  # launch() with the request caps, the upload cap and the sweeper (guard.py)
    return demo
