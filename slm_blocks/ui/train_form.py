"""The Train form, generated from the job schema the way the Build tab's editor is generated from the spec.

Every field of DataConfig, TokenizerConfig and TrainConfig gets a widget from its type and metadata (label,
help, what an empty value means): the common ones in view, the rest under Advanced, so the form can set
everything the CLI can. `collect` turns the widgets' values back into a job dict (the /train payload);
checking it is the job parser's work, which names each problem's field (`field_name`) as the form labels it.
"""

from __future__ import annotations

import json
import typing
from dataclasses import fields

import gradio as gr

from ..model.fields import unwrap_optional
from ..training.config import TrainConfig
from ..training.data import DataConfig, builtin_datasets
from ..training.job import field_label
from ..training.schema import parse_number
from ..training.tokenization import TokenizerConfig
from .widgets import field_widget

RECORDS = {"data": DataConfig, "tokenizer": TokenizerConfig, "train": TrainConfig}
SKIP = {"data.paths"}  # files come only through the upload widget
SOURCES = [("Built-in", "builtin"), ("Upload", "files"), ("Hub", "hub")]
TIME_LABEL = "Time budget (minutes)"  # the form edits train.max_time in minutes; the job holds seconds


def form_fields() -> list[tuple[str, typing.Any, dict]]:
    """(path, type hint, metadata) of every form field, common ones first, in declaration order."""
    out = []
    for prefix, cls in RECORDS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            path = f"{prefix}.{f.name}"
            if path not in SKIP:
                out.append((path, hints[f.name], dict(f.metadata)))
    return sorted(out, key=lambda x: bool(x[2].get("advanced")))  # stable: keeps the declaration order


def default_of(path: str):
    prefix, name = path.split(".", 1)
    f = next(f for f in fields(RECORDS[prefix]) if f.name == name)
    return f.default_factory() if callable(f.default_factory) else f.default


def widget_label(path: str) -> str:
    return TIME_LABEL if path == "train.max_time" else field_label(path)


def make_widget(path: str, hint, meta: dict, value, visible: bool = True):
    """One input for one job field (ui/widgets.py); the data source and the built-in datasets get their own."""
    common = dict(label=widget_label(path), info=meta.get("help") or None, interactive=True, visible=visible,
                  elem_id=_elem_id(path))
    if path == "data.source":
        return gr.Radio(SOURCES, value=value, **common)
    if path == "data.name":
        return gr.Dropdown(list(builtin_datasets()), value=value,
                           **{**common, "info": " · ".join(f"{k}: {v}" for k, v in builtin_datasets().items())})
    choices = typing.get_args(unwrap_optional(hint)[0])
    return field_widget(hint, meta, value, label=common["label"], elem_id=common["elem_id"], visible=visible,
                        radio=len(choices) <= 4 and not meta.get("advanced"))


def _elem_id(path: str) -> str:
    return "job-" + path.replace(".", "-").replace("_", "-")


def build_form(limits, overrides: dict | None = None) -> dict[str, gr.components.Component]:
    """Lay out the form (inside the caller's column): common fields, the upload widget, then Advanced.
    Returns path -> component, plus "files" (the upload widget) and "run_name"."""
    start = {"train.max_steps": 1000, "train.max_time": min(10.0, limits.max_time_s / 60), "train.eval_every": None,
             "tokenizer.vocab_size": None, **(overrides or {})}
    specs = form_fields()
    w: dict = {"run_name": gr.Textbox("my-first-model", label="Run name", interactive=True, elem_id="job-run-name")}
    common = [s for s in specs if not s[2].get("advanced")]
    advanced = [s for s in specs if s[2].get("advanced")]
    hidden = {"data.hub_id", "tokenizer.vocab_size", "tokenizer.name_or_path"}  # shown for hub / bpe / pretrained
    for path, hint, meta in common:
        w[path] = make_widget(path, hint, meta, start.get(path, default_of(path)), visible=path not in hidden)
        if path == "data.name":
            w["files"] = gr.File(file_count="multiple", label="Upload text data (.txt .md .jsonl .json .csv "
                                 ".parquet)", file_types=[".txt", ".md", ".jsonl", ".json", ".csv", ".parquet"],
                                 visible=False)
    with gr.Accordion("Advanced", open=False, elem_id="train-advanced") as acc:
        gr.Markdown("Every training setting the command line has. Empty fields are derived from max steps and "
                    "the time budget (shown as *auto*).")
        train = [s for s in advanced if s[0].startswith("train.")]
        with gr.Row():
            for path, hint, meta in train:
                if hint is not bool:
                    w[path] = make_widget(path, hint, meta, start.get(path, default_of(path)))
        with gr.Row():  # checkboxes on their own row: in the grid a Checkbox got a column too narrow for its label
            for path, hint, meta in train:
                if hint is bool:
                    w[path] = make_widget(path, hint, meta, start.get(path, default_of(path)))
        gr.Markdown("**Data options**")
        with gr.Row():
            for path, hint, meta in advanced:
                if path.startswith("data."):
                    w[path] = make_widget(path, hint, meta, start.get(path, default_of(path)))
    w["advanced"] = acc
    return w


def paths() -> list[str]:
    """The job fields the form edits, in the order `collect` takes their values."""
    return ["run_name"] + [p for p, _, _ in form_fields()]


def collect(spec_json: str, *values) -> dict:
    """The form's values as a job dict (unchecked: the job parser reports every problem by field)."""
    job: dict = {"data": {}, "tokenizer": {}, "train": {}}
    for path, value in zip(paths(), values):
        if isinstance(value, str) and path not in ("train.sample_prompt", "run_name"):
            value = value.strip() or None  # an empty optional field means "derived"
        if path == "train.max_time" and value is not None:
            ok, minutes, _ = parse_number(value)
            value = minutes * 60 if ok else value  # not a number: the parser names the field
        if path == "run_name":
            job["run_name"] = value or "run"
            continue
        head, name = path.split(".", 1)
        job[head][name] = value
    data, tok = job["data"], job["tokenizer"]
    for name, source in (("name", "builtin"), ("hub_id", "hub"), ("hub_config", "hub")):
        if data.get("source") != source:
            data.pop(name, None)
    if tok.get("kind") != "bpe":
        tok.pop("vocab_size", None)
    if tok.get("kind") != "pretrained":
        tok.pop("name_or_path", None)
    try:
        job["spec"] = json.loads(spec_json) if spec_json else "tiny-char"
    except ValueError:
        job["spec"] = spec_json  # not JSON: the parser says so, under `spec`
    return job


VISIBILITY = ("data.name", "files", "data.hub_id", "tokenizer.vocab_size", "tokenizer.name_or_path")


def visibility(source: str, kind: str) -> list:
    """Updates for the VISIBILITY widgets when the data source or the tokenizer changes."""
    return [gr.update(visible=source == "builtin"), gr.update(visible=source == "files"),
            gr.update(visible=source == "hub"), gr.update(visible=kind == "bpe"),
            gr.update(visible=kind == "pretrained")]


def field_name(path: str) -> str:
    """A problem's field as the learner sees it: '**Learning rate** (`train.lr`)'."""
    shown = widget_label(path)
    return f"**{shown}** (`{path}`)" if shown != path else f"`{path}`"
