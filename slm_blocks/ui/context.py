"""What the tabs share, registered once: the session store and its actions, and the app state every tab reads.

Three pieces of state decide what more than one tab shows. Each is a `gr.State` whose `.change` event is the one
place a dependent view subscribes (never a hidden component used as a wire: Gradio does not fire the events of a
component it does not draw, which once left the Train preview describing the wrong model):

- `spec`: the Build tab's spec (a dict whose blocks carry an `_id`). Train's preview and Start button, Grow's
  student line follow it.
- `runs`: this session's runs and imported models, each as {"name", "kind", "status"} (`run_records`), and which
  of them is selected, as {"records": [...], "selected": name}: one value, so one change event carries both.
  Every run picker follows it: Train's Resume and Start from, Generate's model, Grow's source and run, Share's
  run.
- `selected`: the run the learner is on (the last one started, resumed, grown or imported); pickers move to it.

`runs` is recomputed (`refresh_runs`) when the page loads, when a tab is opened and when an event that makes runs
ends, so a picker is current whenever the learner looks at it.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field, fields

import gradio as gr

from .state import SessionStore


def run_records(session) -> list[dict]:
    """The session's runs (with their state) and imported models, oldest first."""
    out = []
    for name, run in session.runs.items():
        status = run.status
        out.append({"name": name, "kind": "run", "status": status})
    out += [{"name": n, "kind": "import", "status": "done"} for n in session.imports if n not in session.runs]
    return out


def finished(records) -> list[str]:
    """Runs that can be a source (fine-tune, distill, prune) or be exported: not training or waiting."""
    return [r["name"] for r in records or [] if r["kind"] == "run" and r["status"] not in ("queued", "running",
                                                                                         "requeue")]


def run_names(records: list[dict]) -> list[str]:
    return [r["name"] for r in records or [] if r["kind"] == "run"]


def model_names(records: list[dict]) -> list[str]:
    return [r["name"] for r in records or []]


@dataclass
class Result:
    """A handler's named result; `emit` turns it into the outputs tuple, in the order of its fields (the wiring
    lists the components in that order, see `outputs`)."""

    def emit(self) -> tuple:
        return astuple(self) if len(fields(self)) > 1 else (getattr(self, fields(self)[0].name),)

    @classmethod
    def outputs(cls, components: dict) -> list:
        """The components for this result's fields, in order: `components[field name]`."""
        return [components[f.name] for f in fields(cls)]


def emitting(fn):
    """Wrap a handler that returns (or yields) Results so Gradio gets their outputs tuples. Keeps the handler's
    signature (Gradio reads gr.Request and gr.OAuthToken parameters from it)."""
    import functools
    import inspect

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            for result in fn(*args, **kwargs):
                yield result.emit() if isinstance(result, Result) else result
        return gen

    @functools.wraps(fn)
    def call(*args, **kwargs):
        result = fn(*args, **kwargs)
        return result.emit() if isinstance(result, Result) else result
    return call


@dataclass
class RunsView(Result):
    runs: list
    selected: str | None


@dataclass
class AppContext:
    store: SessionStore
    actions: object  # handlers.Handlers: what the buttons and API endpoints do
    spec: gr.State
    runs: gr.State
    selected: gr.State
    loads: list = field(default_factory=list)  # (fn, inputs, outputs, then) run when a page loads (ui/app.py)

    def refresh_runs(self, request: gr.Request) -> tuple:
        """(runs, selected) for the caller's session: see the module docstring."""
        session = self.store.get(getattr(request, "session_hash", None))
        records = run_records(session)
        names = model_names(records)
        selected = session.followed if session.followed in names else (names[-1] if names else None)
        return RunsView({"records": records, "selected": selected}, selected).emit()

    def on_load(self, fn, inputs, outputs, then: tuple | None = None) -> None:
        """Run `fn` when a page loads (and `then` = (fn, inputs, outputs) after it)."""
        self.loads.append((fn, inputs, outputs, then))

    def after(self, event) -> None:
        """Recompute the run list when `event` (one that makes or changes runs) is over."""
        event.then(self.refresh_runs, None, [self.runs, self.selected], api_visibility="private",
                   show_progress="hidden")

    def follow_runs(self, picker, choices, keep=None, follow_selected: bool = True) -> None:
        """Keep `picker`'s choices in step with the run list: `choices(records)` gives them. When the selected run
        changes (a run started, resumed, grown or imported) the picker shows it; otherwise its value stays while it
        is still a choice (or `keep(value)` says so: a Hub id typed in)."""
        seen = gr.State(None)  # the selected run this picker last moved to

        def update(runs, current, last):
            runs = runs or {}
            names, selected = choices(runs.get("records") or []), runs.get("selected")
            if follow_selected and selected != last and selected in names:
                value = selected
            elif current in names or (keep is not None and keep(current)):
                value = current
            else:
                value = selected if selected in names else (names[-1] if names else None)
            return gr.update(choices=names, value=value), selected

        self.runs.change(update, [self.runs, picker, seen], [picker, seen], api_visibility="private",
                         show_progress="hidden")
