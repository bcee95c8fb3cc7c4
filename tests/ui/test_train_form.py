"""The Train form is generated from the job schema (every training setting the CLI has, common ones in view, the
rest under Advanced), turns back into a valid job, and the Train tab's views read typed events."""

import typing
from dataclasses import fields

import gradio as gr
import pytest

from slm_blocks import load_preset
from slm_blocks.training.config import TrainConfig
from slm_blocks.training.data import DataConfig
from slm_blocks.training.events import DoneEvent, EvalEvent, SampleEvent, StatusEvent, StepEvent
from slm_blocks.training.job import Job, JobError
from slm_blocks.training.jobs import QueuedTraining
from slm_blocks.training.tokenization import TokenizerConfig
from slm_blocks.ui.state import Limits
from slm_blocks.ui.train_form import build_form, collect, default_of, form_fields, paths, widget_label
from slm_blocks.ui.train_view import (
    describe, job_problems, log_text, queue_line, sample_at, samples, scrub, timeline_update,
)

SPEC = load_preset("tiny-char").to_json()


def form_values(**over) -> list:
    values = {p: ("my-run" if p == "run_name" else default_of(p)) for p in paths()}
    values.update({"train.max_time": "5", **over})
    return ["" if v is None else v for v in values.values()]


def test_every_setting_has_a_field_with_a_unique_label():
    got = {p for p, _, _ in form_fields()}
    for prefix, cls in (("train", TrainConfig), ("data", DataConfig), ("tokenizer", TokenizerConfig)):
        for f in fields(cls):
            assert f"{prefix}.{f.name}" in got or f"{prefix}.{f.name}" == "data.paths", f"{prefix}.{f.name}"
    labels = [widget_label(p) for p in got]
    assert len(labels) == len(set(labels)), sorted(labels)


def test_the_form_puts_common_settings_in_view_and_the_rest_under_advanced():
    with gr.Blocks():
        form = build_form(Limits(max_time_s=600))
    advanced = form["advanced"]
    inside = set()

    def walk(block):
        for child in getattr(block, "children", []):
            inside.add(child)
            walk(child)

    walk(advanced)
    common = {"data.source", "data.name", "data.hub_id", "tokenizer.kind", "tokenizer.vocab_size",
              "tokenizer.name_or_path", "train.max_time", "train.max_steps", "train.batch_size", "train.lr",
              "train.seed"}
    for path, comp in form.items():
        if path in ("advanced", "files", "run_name"):
            continue
        assert comp.interactive is True, path  # editable wherever the form is built (gr.render included)
        assert (comp in inside) == (path not in common), path
    for name in ("optimizer", "muon_momentum", "decay", "precision", "grad_accum", "warmup_steps", "min_lr_ratio",
                 "weight_decay", "beta1", "beta2",
                 "grad_clip", "seq_len", "early_stop_patience", "early_stop_min_delta", "eval_every",
                 "eval_batches", "sample_tokens", "checkpoint_every"):
        assert form[f"train.{name}"] in inside, name
    assert form["train.max_time"].label == "Time budget (minutes)" and form["train.max_time"].value == "10"
    assert form["train.warmup_steps"].placeholder == "auto: min(20, max_steps / 10)"


def test_collect_gives_a_valid_job():
    job = Job.from_dict(collect(SPEC, *form_values()), "app")
    assert job.train.max_time == 300 and job.train.max_steps == 2000 and job.train.warmup_steps is None
    assert job.data == DataConfig() and job.tokenizer == TokenizerConfig() and job.run_name == "my-run"
    # fields that do not apply to the choice are left out; optional ones typed as text are parsed by the job
    d = collect(SPEC, *form_values(**{"tokenizer.kind": "bpe", "tokenizer.vocab_size": "512",
                                      "tokenizer.name_or_path": "x/y", "train.warmup_steps": " 7 ",
                                      "data.source": "hub", "data.hub_id": "owner/set"}))
    job = Job.from_dict(d, "app")
    assert job.tokenizer == TokenizerConfig("bpe", 512, None) and job.train.warmup_steps == 7
    assert job.data.hub_id == "owner/set" and "name" not in d["data"]


def test_form_problems_name_the_field_as_the_learner_sees_it():
    with pytest.raises(JobError) as e:
        Job.from_dict(collect(SPEC, *form_values(**{"train.max_time": "soon", "train.warmup_steps": "x",
                                                    "train.lr": 7})), "app")
    text = job_problems(e.value)
    assert "**Time budget (minutes)** (`train.max_time`)" in text
    assert "**Warmup steps** (`train.warmup_steps`)" in text and "**Learning rate** (`train.lr`)" in text
    with pytest.raises(JobError) as e:
        Job.from_dict(collect("{broken", *form_values()), "app")
    assert "**Model spec** (`spec`)" in job_problems(e.value)


def test_messages_never_show_server_paths():
    msg = scrub("file not found: /home/app/.slm-blocks/sessions/abc123/uploads/data.txt; and /srv/x/ too")
    assert "/home" not in msg and "sessions" not in msg and "data.txt" in msg
    assert len(scrub("x" * 10_000)) < 2100


def entry_with(events, status="running", max_steps=100, max_time=None) -> QueuedTraining:
    e = QueuedTraining(None, "/tmp/unused", resume=True, max_steps=max_steps, max_time=max_time)
    e.events, e.status = list(events), status
    return e


def step(n, elapsed=1.0):
    return StepEvent(n, 2.0, 1e-3, 0.5, 1000.0, n * 100, elapsed, 30.0)


def test_status_shows_progress_and_a_time_budget_bar():
    e = entry_with([StatusEvent("loading the data")])
    assert "Preparing: loading the data" in describe(e)
    e = entry_with([step(10, elapsed=15.0)], max_time=60)
    text = describe(e)
    assert "Step **10/100**" in text and "steps 10/100" in text and "time 15 s / 1 min 00 s" in text
    assert "time " not in describe(entry_with([step(10)]))  # no budget, no time bar
    assert "number **2** in line" in describe(entry_with([], "queued"), 2, (125.0, False))
    assert "≈ 2 min 05 s" in queue_line(2, (125.0, False)) and "at most" in queue_line(1, (600.0, True))
    assert "unknown" in queue_line(1, (None, False))


def test_a_resume_shows_preparing_until_its_own_first_step():
    e = entry_with([step(10), StatusEvent("reopening the run")])
    e.carried = 1
    assert "Preparing" in describe(e)
    e.events.append(step(11))
    assert "Step **11/100**" in describe(e)


def test_sample_timeline_keeps_every_sample():
    events = [SampleEvent(10, "xq zz"), EvalEvent(10, 3.0, 3.1, 22.0, 4.4, None), SampleEvent(20, "the ca"),
              SampleEvent(30, "the cat sat"), SampleEvent(20, "the cat")]  # a resume repeated step 20
    assert [s.text for s in samples(events)] == ["xq zz", "the cat", "the cat sat"]
    assert sample_at(events, 25).startswith("step 20 (sample 2):\nthe cat")
    assert sample_at(events, 10).startswith("step 10, val loss 3.100 (sample 1)")
    assert sample_at(events, 0).startswith("step 10") and sample_at(events, None).startswith("step 30")
    assert "No samples yet" in sample_at([], 5)
    upd = timeline_update(events)
    assert upd["visible"] and upd["minimum"] == 10 and upd["maximum"] == 30 and "value" not in upd
    first = timeline_update(events[:1])  # the first sample: the slider starts on it, so its text shows at once
    assert first["value"] == 10 and first["minimum"] == 10


def test_log_keeps_the_newest_lines_newest_first():
    events = [step(i) for i in range(1, 301)] + [DoneEvent(300, "max_steps", "reached max_steps 300", None, 2.0)]
    lines = log_text(events).splitlines()
    assert len(lines) == 200 and lines[0] == "done: reached max_steps 300" and "step    102" in lines[-1]


def test_form_types_match_the_schema():
    for path, hint, meta in form_fields():
        base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        assert meta.get("label"), f"{path} has no label"
        assert base, path
