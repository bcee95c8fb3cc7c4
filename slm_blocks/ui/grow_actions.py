"""What the Grow tab does (its layout and wiring: tabs/grow.py): make a model from another one. Fine-tune (start
from its weights), distill (a smaller student learns from it as a teacher) or prune (cut it down, then heal it by
distilling from the original); a before/after table (parameters, held-out loss, tokens/s) and the kd / ce curves.
Also what the Train tab's "Start from" choice says, and `resolve_growth`, which the /train handler calls to turn
this session's run names into their folders (and to refuse a bad source before anything is queued). The engine
is slm_blocks.grow.
"""

from __future__ import annotations

import html
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from ..training.config import TrainConfig
from ..training.data import is_hub_id
from ..training.job import Job, JobError
from ..training.schema import Problem, SettingsError, parse_number, short
from .state import SessionRun, SessionStore
from .train_form import SCRATCH
from .train_view import follow, job_problems, scrub
from .uploads import UserError

log = logging.getLogger("slm_blocks.app")

SOURCE_DATA = "the source run's data"  # Grow's data choice: what the source trained on
TECHNIQUES = ["Fine-tune", "Distill", "Prune + heal"]
TABLE_COLUMNS = ["model", "parameters", "held-out loss", "bits/char", "tokens/s", "speed vs first"]


def pruned_line(result) -> str:
    """What pruning removed, in words, and what it cost before healing."""
    from ..model.estimate import human

    return (f"✂️ **Pruned**: {html.escape(result.plan)}: {human(result.params_before)} → {human(result.params_after)} "
            f"parameters; held-out loss {result.val_loss_before:.3f} → {result.val_loss_after:.3f} before healing.")


def shown_row(row: dict) -> dict:
    """A before/after row as the learner reads it: 810K parameters, 22,728 tokens/s, 0.62×."""
    from ..model.estimate import human

    return {**row, "parameters": human(row["parameters"]), "tokens/s": f"{row['tokens/s']:,}",
            "speed vs first": f"{row['speed vs first']:.2f}×"}

INTRO = """## Grow a model from another one
Real small language models are rarely trained from random numbers: they are **continued**, **taught** or
**cut down** from models that already know something. Pick a finished run of this session (or a Hub id) and a
technique; when it is done, the table compares before and after on the same held-out text, and the run shows up
in **Compare** next to the others."""

EXPLAIN = {
    "Fine-tune": "**Fine-tune**: keep training a model that already learned something. The new run starts from its "
                 "weights (step 0 has exactly its loss), with its architecture and its tokenizer, so it only has to "
                 "learn what is new: a few hundred steps can beat thousands from scratch.",
    "Distill": "**Distill**: a small *student* (the Build tab's blocks) learns from a bigger *teacher*. Besides the "
               "next character in the data (cross-entropy, **ce**), it copies the teacher's whole guess: every "
               "token's probability, softened by the temperature **T** so that near misses count too (**kd** = "
               "T²·KL). The loss is α·kd + (1−α)·ce: α = 0 is plain training, α = 1 follows only the teacher. The "
               "student uses the teacher's tokenizer.",
    "Prune + heal": "**Prune + heal**: measure what each part of a trained model does on a few batches of its data, "
                    "then cut what matters least: whole layers that barely change their input (depth), MLP neurons "
                    "that hardly fire and attention heads whose output is small (width, whole key/value groups for "
                    "GQA), as NVIDIA's Minitron does. The cut model is worse at first; **healing** is a short "
                    "distillation from the uncut model that wins most of it back, in a fraction of the steps a model "
                    "of that size would need from scratch.",
}


# ----------------------------------------------------------------------------- /train: session runs as sources


def _finished_run(session, name: str, path: str) -> SessionRun:
    run = session.runs.get(name)
    if run is None:
        raise JobError([Problem(path, f"{short(name)} is not one of this session's runs; pick one from the list "
                                "(or give a Hub id 'owner/name')")])
    if run.job is not None and not run.job.finished:
        raise JobError([Problem(path, f"{name} is still training; wait until it finishes or stop it")])
    return run


def resolve_growth(job: Job, session, caps) -> None:
    """For a job with `init_from` or a teacher: a run name becomes that session run's folder (it must have
    finished), a Hub id is checked now (config and size against the cap, no weights downloaded), so a bad
    source is refused before anything is queued or created. JobError names the field."""
    from ..grow.source import locate

    for path, holder, attr in (("init_from", job, "init_from"), ("teacher.source", job.teacher, "source")):
        value = getattr(holder, attr) if holder is not None else None
        if not value:
            continue
        if value in session.runs or not is_hub_id(value):
            run = _finished_run(session, value, path)
            locate(str(run.dir), path, caps)  # checkpoint there, under the cap
            setattr(holder, attr, str(run.dir))
        else:
            locate(value, path, caps, hub_only=True)  # never a folder of the server's working directory


def worker_for(job: Job) -> str:
    """The worker module a job trains in: the growth layer's when it starts from weights or has a teacher."""
    from ..training.jobs import WORKERS

    return WORKERS[1] if job.init_from or job.teacher is not None else WORKERS[0]


def start_from_choices(session) -> list[str]:
    return [SCRATCH] + [n for n, r in session.runs.items() if r.job is None or r.job.finished]


def describe_start_from(store: SessionStore):
    """The line under the Train tab's "Start from" choice: what the run will be when it is not random weights."""
    def describe(value, request: gr.Request):
        from ..model.estimate import estimate, human
        from ..model.spec import ModelSpec

        if not isinstance(value, str) or not value.strip() or value == SCRATCH:
            return ""
        session = store.get(getattr(request, "session_hash", None))
        if value in session.runs:
            try:
                record = json.loads((session.runs[value].dir / "run.json").read_text())
                spec = ModelSpec.from_dict(record["spec"])
            except (OSError, ValueError, KeyError):
                return f"⚠️ {html.escape(value)} has no readable run.json yet"
            return (f"🌱 **Fine-tuning {html.escape(value)}**: {html.escape(spec.summary())}, "
                    f"{human(estimate(spec).params)} parameters, its {html.escape(record['tokenizer']['kind'])} "
                    "tokenizer (the preview above describes it).")
        if is_hub_id(value):
            return (f"🌱 **Fine-tuning {html.escape(value)}** from the Hub: only its config, safetensors and "
                    "tokenizer files are downloaded, after its size is checked against this app's cap.")
        return f"⚠️ {html.escape(short(value))} is neither a run of this session nor a Hub id 'owner/name'"
    return describe


# ----------------------------------------------------------------------------- the tab's behaviour

SPLITS = {"loss": "train (total)", "kd_loss": "kd (teacher)", "ce_loss": "ce (data)"}


def curves_frame(records) -> pd.DataFrame:
    """The training loss, its kd and ce parts (distillation) and the validation loss, long format, from
    metrics records (`read_history`) or events. Every split has a row from the start (NaN: not drawn): a Gradio
    plot keeps the colours of the first frame it draws, so a split that appeared later would stay invisible."""
    from dataclasses import asdict

    from ..training.events import EvalEvent, StepEvent

    rows = []
    for r in records:
        if isinstance(r, (StepEvent, EvalEvent)):
            r = {"kind": "step" if isinstance(r, StepEvent) else "eval", **asdict(r)}
        if not isinstance(r, dict):
            continue
        if r.get("kind") == "step":
            rows += [{"step": r["step"], "loss": r[k], "split": n} for k, n in SPLITS.items()
                     if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        elif r.get("kind") == "eval" and isinstance(r.get("val_loss"), (int, float)):
            rows.append({"step": r["step"], "loss": r["val_loss"], "split": "validation"})
    first = min((r["step"] for r in rows), default=0)
    rows += [{"step": first, "loss": float("nan"), "split": split} for split in [*SPLITS.values(), "validation"]
             if not any(r["split"] == split for r in rows)]
    return pd.DataFrame(rows, columns=["step", "loss", "split"]).astype({"step": "int64", "loss": "float64"})



def _number(value, name: str, kind=float, lo=None, hi=None, default=None):
    ok, v, why = parse_number(value, kind, optional=default is not None)
    if not ok:
        raise UserError(f"{name}: {why}")
    v = default if v is None else v
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise UserError(f"{name}: is {v:g}; use a value from {lo:g} to {hi:g}")
    return v


class Grow:
    def __init__(self, store: SessionStore, handlers):
        self.store, self.h = store, handlers

    def _session(self, request):
        return self.store.get(getattr(request, "session_hash", None) if request is not None else None)

    def choices(self, current, request: gr.Request):
        """The run lists (Grow's source keeps its choice while it is still a finished run, or a Hub id)."""
        s = self._session(request)
        finished = [n for n, r in s.runs.items() if r.job is None or r.job.finished]
        keep = current if isinstance(current, str) and (current in finished or is_hub_id(current)) else None
        return (gr.update(choices=finished, value=keep or (finished[-1] if finished else None)),
                gr.update(choices=start_from_choices(s)), gr.update(choices=list(s.runs),
                                                                     value=s.followed or None))

    def grow(self, technique, source, run_name, steps, alpha, temperature, target_share, drop_layers, mlp_keep,
             heads_keep, spec_json, data=SOURCE_DATA, oauth_token: gr.OAuthToken | None = None,
             request: gr.Request = None):
        """Start the chosen technique from `source` and stream (status, curves, log, before/after table).
        `spec_json`: the distilled student; `data`: SOURCE_DATA or "builtin:<name>" (fine-tuning and distilling)."""
        session = self._session(request)
        table = pd.DataFrame(columns=TABLE_COLUMNS)
        try:
            if technique not in TECHNIQUES:
                raise UserError(f"Technique: choose one of {', '.join(TECHNIQUES)}")
            if not isinstance(source, str) or not source.strip():
                raise UserError("Source: train a model first (Train tab), then pick it here, or give a Hub id "
                                "'owner/name'")
            source = source.strip()
            steps = int(_number(steps, "Steps", int, 1, self.store.limits.max_steps))
            name = run_name.strip() if isinstance(run_name, str) and run_name.strip() else \
                f"{source.split('/')[-1]}-{technique.split()[0].lower()}"
            if technique == "Prune + heal":
                entry, name, pruned = self._prune(session, source, name, steps, alpha, temperature, target_share,
                                                  drop_layers, mlp_keep, heads_keep, request)
                yield from self._follow(entry, name, session, before=pruned + "\n\n")
                return
            payload, files, tmp = self._job(session, technique, source, name, steps, alpha, temperature, spec_json,
                                            data)
        except JobError as e:
            yield job_problems(e), curves_frame([]), "", table
            return
        except SettingsError as e:  # pruning options: each problem by option
            yield "❌ The pruning options have problems:\n" + "\n".join(
                f"- `{p.path}`: {html.escape(scrub(p.message))}" for p in e.problems), curves_frame([]), "", table
            return
        except Exception as e:
            yield f"❌ {html.escape(self.h_friendly(e))}", curves_frame([]), "", table
            return
        last = log_text = None
        try:
            for status, _plot, _sample, log_text, _timeline in self.h.train(payload, files, oauth_token, request):
                last = status
                run = session.runs.get(session.followed) if not status.startswith("❌") else None
                yield status, curves_frame(run.job.events if run and run.job else []), log_text, table
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        name = session.followed
        if last and not last.startswith("❌") and name in session.runs:
            yield last, self._curves(session.runs[name].dir), log_text, self._table(session.runs[name].dir)

    @staticmethod
    def h_friendly(e: Exception) -> str:
        """A message for the learner (no traceback; an unexpected error is logged and named only by its type)."""
        if isinstance(e, (UserError, ValueError, FileNotFoundError, FileExistsError, RuntimeError)):
            return scrub(str(e))
        log.exception("grow: unexpected error")
        return f"Something went wrong ({type(e).__name__}); the app is still running — try again."

    def _job(self, session, technique, source, name, steps, alpha, temperature, spec_json, data_choice=SOURCE_DATA):
        """The /train payload for fine-tuning or distillation (data: the source run's, or the built-in set the
        learner picked; for a Hub model the built-in stories), the data files to hand over when the source trained
        on uploads, and the temporary folder holding them."""
        limits = self.store.limits
        data, files, tmp, train = {"source": "builtin", "name": "stories"}, None, None, {}
        builtin = data_choice.removeprefix("builtin:") if isinstance(data_choice, str) and \
            data_choice.startswith("builtin:") else None
        if data_choice not in (None, "", SOURCE_DATA) and builtin is None:
            raise UserError(f"Data to learn from: choose {SOURCE_DATA!r} or a built-in set (got {short(data_choice)})")
        if source in session.runs:
            record = json.loads((session.runs[source].dir / "run.json").read_text())
            data = {k: v for k, v in record["data"].items() if k != "paths"}
            t = record["train"]
            train = {k: t[k] for k in ("batch_size", "seq_len", "seed") if t.get(k) is not None}
            train["lr"] = TrainConfig.from_saved(t).peak_lr()  # what the source really trained with
            if data.get("source") == "files":  # hand the same files over again (the handler copies them)
                tmp = Path(tempfile.mkdtemp(prefix="grow-", dir=session.root))
                files = []
                for p in record["data"].get("paths") or []:
                    files.append(str(shutil.copy(p, tmp / Path(p).name)))
        if builtin is not None:  # the learner's pick (the parser checks the name)
            data, files = {"source": "builtin", "name": builtin}, None
        if technique == "Fine-tune":
            train["lr"] = train.get("lr", 1e-3) / 3  # gentler than training from scratch: keep what it knows
        train.update(max_steps=steps, max_time=float(limits.max_time_s), eval_every=max(1, steps // 10))
        job = {"spec": spec_json or "tiny-char", "data": data, "train": train, "run_name": name}  # parser checks it
        if technique == "Fine-tune":
            job["init_from"] = source
        else:
            job["teacher"] = {"source": source, "alpha": _number(alpha, "α (teacher's share)", float, 0, 1, 0.5),
                              "temperature": _number(temperature, "Temperature", float, 0.1, 100, 2.0)}
        return job, files, tmp

    def _prune(self, session, source, name, steps, alpha, temperature, target_share, drop_layers, mlp_keep,
               heads_keep, request):
        """Prune a finished session run into a new run (in this process: a few forward passes) and queue its
        healing, a resume of the new run. Returns (queue entry, run name)."""
        from ..grow.prune import prune_run
        from ..model.estimate import estimate
        from ..training.jobs import QueueFull
        from ..training.run import open_run
        from .guard import client_address

        limits = self.store.limits
        src = _finished_run(session, source, "source") if source in session.runs else None
        if src is None:
            raise UserError("Source: pruning works on a finished run of this session; pick one from the list")
        share = _number(target_share, "Target size (% of parameters)", float, 1, 99, 0) if target_share else 0
        drop = int(_number(drop_layers, "Drop layers", int, 0, 1000, 0))
        keep = _number(mlp_keep, "MLP neurons kept", float, 0.001, 1, 1.0)
        heads = int(_number(heads_keep, "Heads kept", int, 0, 1024, 0)) or None
        options = {}
        if drop or keep < 1 or heads:
            options = dict(drop_layers=drop, mlp_keep=keep, heads_keep=heads)
        else:
            params = estimate(open_run(src.dir, load_data=False).spec).params
            options = dict(target_params=int(params * (share or 70) / 100))
        with session.lock:
            if self.h._active(session):
                raise UserError("A training of this session is already running; stop it first")
            session.check_room(limits, "Prune")
            self.store.check_disk("Prune")
            name = session.new_run_name(name)
            out = session.root / "runs" / name
            result = prune_run(src.dir, out, heal_steps=steps, heal_max_time=float(limits.max_time_s),
                      alpha=_number(alpha, "α (teacher's share)", float, 0, 1, 0.5),
                      temperature=_number(temperature, "Temperature", float, 0.1, 100, 2.0), **options)
            run = SessionRun(name, out)
            session.runs[name] = run  # a run like any other from now on, healed or not
            entry = self.h._resume_entry(run, 0)  # healing = training the new run from its pruned weights
            entry.client = client_address(request)
            try:
                self.store.queue.submit(entry)
            except QueueFull as e:
                raise UserError(f"{e}. {name} is pruned and kept: heal it later with Resume on the Train tab") from None
            run.job = entry
            session.followed = name
        return entry, name, pruned_line(result)

    def _follow(self, entry, name, session, before: str = ""):
        text = ""
        for status, _plot, _sample, log_text, _timeline in follow(self.store, entry, name):
            text = log_text
            status = before + status
            yield status, curves_frame(entry.events), log_text, pd.DataFrame(columns=TABLE_COLUMNS)
        run = session.runs.get(name)
        if run is not None and entry.status != "error":
            yield status, self._curves(run.dir), text, self._table(run.dir)

    # ----------------------------------------------------------------------------- before / after
    @staticmethod
    def _table(run_dir: Path) -> pd.DataFrame:
        from ..grow.compare import grow_table

        try:
            return pd.DataFrame([shown_row(r) for r in grow_table(run_dir)], columns=TABLE_COLUMNS)
        except Exception:
            log.exception("grow table failed")
            return pd.DataFrame(columns=TABLE_COLUMNS)

    @staticmethod
    def _curves(run_dir: Path) -> pd.DataFrame:
        from ..training.run import read_history

        return curves_frame(read_history(run_dir))

    def table(self, run_name, request: gr.Request):
        """(before/after table, curves, message) of a grown run of this session."""
        session = self._session(request)
        try:
            if not isinstance(run_name, str) or run_name not in session.runs:
                raise UserError("Run: pick one of this session's runs")
            run = session.runs[run_name]
            if run.job is not None and not run.job.finished:
                raise UserError(f"Run: {run_name} is still training; the table comes when it is done")
            table = self._table(run.dir)
            msg = "" if len(table) > 1 else (f"{run_name} was trained from scratch: nothing to compare it with here "
                                             "(the Compare tab shows every run)")
            return table, self._curves(run.dir), msg
        except Exception as e:
            return pd.DataFrame(columns=TABLE_COLUMNS), curves_frame([]), f"❌ {html.escape(scrub(str(e)))}"
