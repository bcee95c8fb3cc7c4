"""Train tab views: what the learner sees of a training, computed from its typed events.

Training runs in a worker process behind the shared queue (training/jobs.py); these functions only read the
events it sends (training/events.py) and turn them into the status line with progress and time-budget bars,
the loss curve, the latest sample, the sample timeline, the log and the preview shown before Start.
"""

from __future__ import annotations

import html
import math
import re
import time

import gradio as gr
import pandas as pd

from ..model.estimate import human
from ..training.events import (
    CheckpointEvent, DoneEvent, ErrorEvent, EvalEvent, ReadyEvent, SampleEvent, StatusEvent, StepEvent, WarningEvent,
)
from ..training.job import JobError
from ..training.jobs import QueuedTraining
from ..training.preview import CHINCHILLA_TOKENS_PER_PARAM, RunPreview
from .train_form import field_name

_ABS_PATH = re.compile(r"(?<![\w.])/(?:[^\s/'\"]+/)+([^\s/'\"]*)")


def scrub(message: str) -> str:
    """A message without absolute server paths (a folder shows as its last part) and never huge."""
    text = _ABS_PATH.sub(lambda m: m.group(1) or "…", str(message))
    return text if len(text) <= 2000 else text[:2000] + " …"


def job_problems(e: JobError) -> str:
    """Every problem of a job, each naming its field as the form labels it and the fix. A path can hold a key
    the caller sent (an unknown setting): no backtick, HTML or Markdown of it survives."""
    def path_text(path: str) -> str:  # shown inside a code span: only a backtick or a line break could leave it
        return re.sub(r"[`\s<>&]", "?", path)

    lines = [f"- {field_name(path_text(p.path))}: {html.escape(scrub(p.message))}" if p.path else
             f"- {html.escape(scrub(p.message))}" for p in e.problems]
    return "❌ The training job has problems:\n" + "\n".join(lines)


def loss_frame(events: list) -> pd.DataFrame:
    rows = [{"step": e.step, "loss": e.loss, "split": "train"} for e in events if isinstance(e, StepEvent)]
    rows += [{"step": e.step, "loss": e.val_loss, "split": "validation"} for e in events if isinstance(e, EvalEvent)]
    # Gradio's plot fixes its axis types and colour domain from the first frame it draws: keep the columns
    # numeric even when empty, and give both splits a row from the start (loss NaN: not drawn)
    first = min((r["step"] for r in rows), default=0)
    rows += [{"step": first, "loss": float("nan"), "split": split} for split in ("train", "validation")
             if not any(r["split"] == split for r in rows)]
    return pd.DataFrame(rows, columns=["step", "loss", "split"]).astype({"step": "int64", "loss": "float64"})


def bar(fraction: float, label: str, color: str = "#22c55e") -> str:
    pct = 100 * min(1.0, max(0.0, fraction))
    return (f"<div title='{html.escape(label)}' style='display:flex;align-items:center;gap:8px;margin:2px 0'>"
            f"<small style='min-width:7.5em'>{html.escape(label)}</small><div style='flex:1;background:#e5e7eb;"
            f"border-radius:6px;height:12px'><div style='background:{color};width:{pct:.1f}%;height:12px;"
            f"border-radius:6px'></div></div></div>")


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def queue_line(position: int, wait: tuple[float | None, bool]) -> str:
    if position <= 0:  # between leaving the line and its worker starting (or going back in line after a turn)
        return "⏳ Getting a trainer ready…"
    seconds, upper = wait
    est = ("estimated wait unknown (the trainings ahead have no time budget yet)" if seconds is None else
           "starting in a moment" if seconds < 5 else
           f"estimated wait {'at most ' if upper else '≈ '}{duration(seconds)}")
    return f"⏳ Waiting for a free trainer: you are number **{position}** in line · {est}."


STEP_EVENTS = (StepEvent, EvalEvent, SampleEvent, CheckpointEvent)  # events that show training has begun


def describe(entry: QueuedTraining, position: int = 0, wait: tuple[float | None, bool] = (None, False)) -> str:
    """Status markdown from the latest events: queue place and wait, step, loss, speed, ETA, progress bars, and
    what the numbers mean (passes over the data, the train/validation gap, overfitting)."""
    events = entry.events
    steps = [e for e in events if isinstance(e, StepEvent)]
    evals = [e for e in events if isinstance(e, EvalEvent)]
    if entry.status == "queued":
        return queue_line(position, wait)
    if entry.status == "error":
        return f"❌ {html.escape(scrub(entry.message))}"
    val = f" · val loss {evals[-1].val_loss:.3f}, {evals[-1].bits_per_char:.3f} bits/char" if evals else ""
    if entry.status in ("done", "stopped"):
        head = "✅ Done" if entry.status == "done" else "⏸️ Stopped (resumable)"
        return f"{head}: {html.escape(scrub(entry.message))}{val}" + _bars(entry, steps[-1] if steps else None) + \
            understanding(events)
    stopping = "⏹️ Stopping after the current step (a resumable checkpoint is kept)… · " if entry.stop_requested else ""
    begun = [e for e in events[entry.carried:] if isinstance(e, STEP_EVENTS)]
    if not begun:  # (an early sample or eval can come before the first logged step: training has begun then)
        status = next((e.message for e in reversed(events) if isinstance(e, StatusEvent)), "starting")
        return f"{stopping}🔄 Preparing: {html.escape(status)}…"
    if not steps or steps[-1].step < begun[-1].step:
        return f"{stopping}🏃 Step **{begun[-1].step}/{entry.max_steps}**{val}" + \
            _bars(entry, steps[-1] if steps else None)
    s = steps[-1]
    acc = f" · accuracy {evals[-1].accuracy:.0%}" if evals and evals[-1].accuracy is not None else ""
    return (f"{stopping}🏃 Step **{s.step}/{entry.max_steps}** · loss {s.loss:.3f}{val}{acc} · lr {s.lr:.2e} · "
            f"{s.tokens_per_s:,.0f} tokens/s · ETA {duration(s.eta_s)}" + _bars(entry, s) + understanding(events))


OVERFIT_PASSES = 4  # passes over the training text past which a small model memorises more than it learns


def understanding(events: list) -> str:
    """One line that says what the numbers mean: passes over the data, the validation - training gap, and an
    overfitting note when validation rises from its best while training falls, or the passes pile up."""
    ready = next((e for e in reversed(events) if isinstance(e, ReadyEvent)), None)
    steps = [e for e in events if isinstance(e, StepEvent)]
    evals = [e for e in events if isinstance(e, EvalEvent)]
    parts = []
    passes = steps[-1].tokens_seen / ready.train_tokens if ready and steps and ready.train_tokens else None
    if passes is not None:
        parts.append(f"{passes:.2g} passes over the training text")
    if evals and steps:
        train = [s.loss for s in steps if s.step <= evals[-1].step][-10:]  # the training loss around that eval
        if train:
            gap = evals[-1].val_loss - sum(train) / len(train)
            parts.append(f"validation − training loss {gap:+.2f}")
    note = ""
    best = min((e.val_loss for e in evals), default=None)
    if len(evals) >= 3 and evals[-1].val_loss > best + 0.02 and evals[-2].val_loss > best:
        note = (" · ⚠️ **overfitting**: the validation loss has risen from its best "
                f"({best:.3f}) while the training loss falls: the model memorises its text; stop, or use more data")
    elif passes is not None and passes > OVERFIT_PASSES:
        note = (f" · ⚠️ {passes:.2g} passes: a small model starts to memorise its training text after about "
                f"{OVERFIT_PASSES}; watch the validation loss, or give it more data")
    return ("\n\n<small>" + " · ".join(parts) + note + "</small>") if parts else ""


def _bars(entry: QueuedTraining, s: StepEvent | None) -> str:
    if s is None:
        return ""
    out = "\n\n" + bar(s.step / max(1, entry.max_steps), f"steps {s.step}/{entry.max_steps}")
    if entry.max_time:
        out += bar(s.elapsed_s / entry.max_time, f"time {duration(s.elapsed_s)} / {duration(entry.max_time)}",
                   "#3b82f6")
    return out


def log_line(e) -> str:
    if isinstance(e, StepEvent):
        return f"step {e.step:>6} loss {e.loss:.4f} lr {e.lr:.2e} grad {e.grad_norm:.2f}"
    if isinstance(e, EvalEvent):
        return f"eval {e.step:>6} val {e.val_loss:.4f} ppl {e.perplexity:.2f} bpc {e.bits_per_char:.3f}"
    if isinstance(e, StatusEvent):
        return f"status: {e.message}"
    if isinstance(e, (WarningEvent, ErrorEvent)):
        return f"{'warning' if isinstance(e, WarningEvent) else 'error'}: {scrub(e.message)}"
    if isinstance(e, ReadyEvent):
        return (f"data {e.data}: {e.train_tokens:,} training tokens, vocabulary {e.vocab_size:,}, "
                f"{human(e.params)} parameters")
    if isinstance(e, CheckpointEvent):
        return f"checkpoint at step {e.step}"
    if isinstance(e, DoneEvent):
        return f"done: {scrub(e.message)}"
    return ""


def log_text(events: list, last: int = 200) -> str:
    """The newest `last` lines, newest first: the newest is always in view (Gradio 6's Textbox autoscroll does
    not follow a streamed value in a real browser; tests/ui/test_browser_train.py checks what the page shows)."""
    return "\n".join(line for line in map(log_line, reversed(events[-last:])) if line)


def samples(events: list) -> list[SampleEvent]:
    """One sample per step (the newest when a resume repeated a step), oldest first."""
    by_step = {e.step: e for e in events if isinstance(e, SampleEvent)}
    return [by_step[k] for k in sorted(by_step)]


def sample_at(events: list, step) -> str:
    """The sample the timeline shows at `step`: the newest one at or before it (the first when before all)."""
    found = samples(events)
    if not found:
        return "No samples yet: one is taken at every eval."
    step = found[-1].step if step is None else step
    pick = next((s for s in reversed(found) if s.step <= step), found[0])
    val = {e.step: e.val_loss for e in events if isinstance(e, EvalEvent)}.get(pick.step)
    loss = f", val loss {val:.3f}" if val is not None and math.isfinite(val) else ""
    # "sample k", not "k of n": the box is drawn when the slider moves, and n grows while the run goes on
    return f"step {pick.step}{loss} (sample {found.index(pick) + 1}):\n{pick.text}"


def timeline_update(events: list):
    """The timeline slider's range follows the samples; its value stays where the learner put it, except that
    it starts on the first sample (so the box beside it shows text before the learner touches the slider)."""
    found = samples(events)
    if not found:
        return gr.update(visible=False)
    lo, hi = found[0].step, found[-1].step
    start = {"value": lo} if len(found) == 1 else {}
    return gr.update(visible=True, minimum=lo, maximum=max(hi, lo + 1), **start)


def history_events(run_dir) -> list:
    """A run's step and eval events from its own log (metrics.jsonl): its curve when no live training holds it."""
    from ..training.events import decode
    from ..training.run import read_history

    try:
        return [decode({**r, "event": r["kind"]}) for r in read_history(run_dir)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def ended_line(status: str, events: list) -> str:
    """The status of a run no process of this app is training (after a reload or a restart)."""
    steps = [e.step for e in events if isinstance(e, StepEvent)]
    at = f" at step {max(steps):,}" if steps else ""
    return {"done": f"✅ Done{at}.",
            "stopped": f"⏹️ Stopped{at}; Resume continues it from its last checkpoint.",
            "error": f"❌ Ended with an error{at}; Resume continues it from its last checkpoint.",
            }.get(status, f"⚠️ Interrupted{at}: the app stopped while it trained. Resume continues it from its "
                          "last checkpoint.")


def follow(store, entry: QueuedTraining, run_name: str):
    """Yield (status, loss frame, latest sample, log, timeline) as events arrive, ~2 updates/s at most."""
    seen, last_yield, final = -1, 0.0, False
    while True:
        entry.wait_for_change(max(seen, 0), timeout=1.0)
        events = list(entry.events)
        now, ended = time.time(), entry.finished
        # the end is always shown, even with no new event (a training stopped while it waited in line)
        if (len(events) != seen and (now - last_yield > 0.5 or ended)) or entry.status == "queued" \
                or (ended and not final):
            seen, last_yield, final = len(events), now, ended
            found = samples(events)
            latest = f"step {found[-1].step}:\n{found[-1].text}" if found else ""
            status = describe(entry, store.queue.position(entry), store.queue.estimated_wait(entry))
            yield (f"**{html.escape(run_name)}** — " + status, loss_frame(events), latest, log_text(events),
                   timeline_update(events))
        if final and seen == len(entry.events):
            return


def preview_markdown(p: RunPreview, job) -> str:
    """The Train tab's "what you are about to train" box."""
    t = job.train
    changed = "" if p.params == p.spec_params else f" (the Build tab's {human(p.spec_params)} assumes its own " \
        f"vocabulary; training uses the tokenizer's)"
    ratio = p.tokens_per_param
    if p.epochs > OVERFIT_PASSES:  # data-limited: more tokens per parameter would only mean more repeats
        data_note = (f"This run passes over its data {p.epochs:.2g} times: past about {OVERFIT_PASSES} passes a "
                     "model memorises its text (the validation loss stops falling or rises); more data, or fewer "
                     "steps, would help more than a longer run.")
    else:
        verdict = ("far below it: the model will be undertrained for its size (fine for a first look)" if ratio < 2
                   else "below it: more steps or a smaller model would use this budget better" if ratio < 10 else
                   "around it" if ratio <= 40 else "above it: a bigger model could use this much data")
        data_note = (f"Chinchilla rule of thumb: a compute-optimal model sees about {CHINCHILLA_TOKENS_PER_PARAM} "
                     f"training tokens per parameter; this run is {verdict}.")
    ends = (f"the time budget ({duration(t.max_time)}) ends it at about step {p.steps:,} of {t.max_steps:,}"
            if p.ends_by == "time" else f"{t.max_steps:,} steps")
    kept = [f"🌱 **Fine-tuning {html.escape(p.source)}**: its trained weights, architecture and tokenizer (the "
            "Build tab's blocks and the tokenizer choice are not used)"] if p.source else []
    return "\n".join("- " + line for line in kept + [
        f"**Architecture**: {html.escape(p.summary)}",
        f"**{human(p.params)} parameters** with the {html.escape(p.tokenizer_kind)} tokenizer's "
        f"{p.vocab_size:,}-token vocabulary{changed} · training memory ≈ {human(p.train_bytes, 'B')}",
        f"**Data**: {html.escape(p.data.name)}: {human(p.data.train_tokens)} training tokens, "
        f"{human(p.data.val_tokens)} validation tokens",
        f"**This run**: {ends} × {p.tokens_per_step:,} tokens = {human(p.tokens)} tokens "
        f"(**{ratio:.2g} tokens per parameter**, {p.epochs:.2g} passes over the data) · **ETA ≈ {duration(p.eta_s)}** "
        f"(from {p.speed_from})",
        data_note,
    ])


def start_label(p: RunPreview, spec_name: str | None) -> str:
    """The Start button says what it will train: "Start training · llama · 4.17M"."""
    name = p.source or spec_name or p.summary.split(" · ")[0]
    return f"Start training · {name} · {human(p.params)}"
