"""What the app's buttons and API endpoints do, per session. Each method takes a `gr.Request` to find the
caller's session; every user error comes back as a message naming the field and the fix (no tracebacks).
"""

from __future__ import annotations

import html
import logging
import shutil
import threading
import time
from pathlib import Path

import gradio as gr
import pandas as pd
import torch

from ..model.generation import SamplingConfig, next_token_distribution, stream_text
from ..training.events import EvalEvent, SampleEvent, StepEvent
from ..training.hub_access import reading_as
from ..training.job import Job, JobError
from ..training.jobs import QueuedTraining
from ..training.schema import parse_number, short
from .card_view import card_preview
from .deploy import with_weights
from .guard import client_address, one_at_a_time
from .import_upload import gather_import_files
from .state import SessionRun, SessionStore
from .streaming import chunked, one_thread
from .train_view import (
    ended_line,
    follow,
    history_events,
    job_problems,
    loss_frame,
    preview_markdown,
    sample_at,
    scrub,
    start_label,
)
from .attention_view import MAX_TOKENS
from .uploads import UserError, archive_for_download, copy_data_uploads, discard_upload, refuse_pickle

log = logging.getLogger("slm_blocks.app")


def _sid(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def _friendly(e: Exception) -> str:
    if isinstance(e, (UserError, ValueError, FileNotFoundError, FileExistsError, RuntimeError)):
        return scrub(str(e))
    log.exception("unexpected error")
    return f"Something went wrong ({type(e).__name__}); the app is still running — try again."


def _train_error(e: Exception) -> str:
    """A refused /train or /resume as the status line: every job problem by field, else one message."""
    if isinstance(e, JobError):
        return job_problems(e)
    return f"❌ {html.escape(_friendly(e))}"


class Handlers:
    def __init__(self, store: SessionStore):
        self.store = store
        self._previews: dict[str, list] = {}  # page -> [newest preview asked for, its lock]
        self._previews_lock = threading.Lock()

    # ----------------------------------------------------------------------------- runs
    def run_choices(self, request: gr.Request):
        s = self.store.get(_sid(request))
        names = list(s.runs)
        return gr.update(choices=names, value=names[-1] if names else None)

    def _active(self, session) -> SessionRun | None:
        return next((r for r in reversed(list(session.runs.values())) if r.job and not r.job.finished), None)

    # ----------------------------------------------------------------------------- train / stop / resume
    def _refused(self, message: str):
        """/train's and /resume's five outputs (status, loss curve, latest sample, log, timeline) for a refusal."""
        return message, loss_frame([]), "", "", gr.update(visible=False)

    def parse_job(self, payload, session, check_caps: bool = True) -> Job:
        """The /train payload (a job object or its JSON text) checked as an app job against this app's caps."""
        caps = self.store.limits.caps() if check_caps else None
        if isinstance(payload, (str, bytes)):
            job = Job.from_json(payload, context="app", caps=caps)
        else:
            job = Job.from_dict(payload, context="app", caps=caps)
        if job.train.max_time is None:  # every app run has a time budget: the app's limit
            job.train.max_time = float(self.store.limits.max_time_s)
        return job

    def train(self, job_payload, files, oauth_token: gr.OAuthToken | None, request: gr.Request):
        """Start training the job (JSON; data files optional) and stream (status, loss curve, sample, log,
        timeline) until it ends. Hub reads (a source model, a teacher, data, a tokenizer) use the visitor's own
        sign-in or none, never the server's token."""
        from .grow_actions import resolve_growth, worker_for

        session = self.store.get(_sid(request))
        token = self.store.hub_token(oauth_token)
        try:
            job = self.parse_job(job_payload, session)
            with reading_as(token):  # run names -> folders; bad sources refused now
                resolve_growth(job, session, self.store.limits.caps())
            with session.lock:  # one start at a time per session: never two trainings on one run folder
                if self._active(session):
                    raise UserError("A training of this session is already running; stop it first")
                session.check_room(self.store.limits, "Start training")
                self.store.check_disk("Start training")
                if job.data.source == "files":  # (files left in the upload widget of another source are ignored)
                    job.data.paths = copy_data_uploads(files, session.root / "uploads",
                                                       self.store.limits.max_upload_mb, session.uploads)
                name = session.new_run_name(job.run_name)
                job.run_name = name
                run = SessionRun(name, session.root / "runs" / name)
                run.job = QueuedTraining(job, run.dir, caps=self.store.limits.caps(),
                                         mlflow_uri=self.store.mlflow_uri, worker=worker_for(job))
                run.job.client = client_address(request)
                run.job.hub_token = token  # handed to the worker in its environment, never written down
                self.store.queue.submit(run.job)  # QueueFull: nothing registered
                session.runs[name] = run
                session.followed = name
        except Exception as e:
            yield self._refused(_train_error(e))
            return
        yield from follow(self.store, run.job, run.name)

    def attach(self, request: gr.Request):
        """When a page opens: the Train tab shows the run it followed (or the newest), and keeps streaming it
        while it trains; a run no process of this app is training is shown as it ended (or was interrupted)."""
        session = self.store.get(_sid(request))
        name = session.followed if session.followed in session.runs else next(reversed(session.runs), None)
        if name is None:
            yield (gr.skip(),) * 5
            return
        run = session.runs[name]
        if run.job is not None:
            yield from follow(self.store, run.job, name)
            return
        events = history_events(run.dir)
        yield (f"**{html.escape(name)}** — " + ended_line(run.status, events), loss_frame(events), "", "",
               gr.update(visible=False))

    def stop(self, request: gr.Request) -> str:
        """Stop this session's running training (a resumable checkpoint is written)."""
        session = self.store.get(_sid(request))
        run = self._active(session)
        if run is None:
            return "Nothing is training in this session."
        self.store.queue.cancel(run.job)
        return f"⏹️ Stopping **{html.escape(run.name)}** after the current step; a resumable checkpoint is kept."

    def resume_plan(self, run_name, extra_steps, request: gr.Request) -> str:
        """What Resume would do, said before it runs: where the run stands, the step it will train to and its
        time budget."""
        import json

        from ..training.checkpoint import latest_checkpoint

        session = self.store.get(_sid(request))
        if not isinstance(run_name, str) or run_name not in session.runs:
            return ""
        run = session.runs[run_name]
        if run.job is not None and not run.job.finished:
            return f"<small>{html.escape(run_name)} is training now; Resume is for a stopped or finished run.</small>"
        try:
            train = json.loads((run.dir / "run.json").read_text())["train"]
            ckpt = latest_checkpoint(run.dir)
            state = json.loads((ckpt / "trainer_state.json").read_text()) if ckpt else {"step": 0}
        except (OSError, ValueError, KeyError):
            return f"<small>{html.escape(run_name)} has no readable run.json or checkpoint yet.</small>"
        ok, extra, _ = parse_number(extra_steps, int, optional=True)
        extra = max(0, extra or 0) if ok else 0
        total, at = train["max_steps"] + extra, state["step"]
        budget = train.get("max_time")
        time_text = (f", with a fresh time budget of {budget / 60:.3g} min" if extra and budget else
                     ", within what is left of its time budget" if budget else "")
        if extra == 0 and at >= train["max_steps"]:
            return (f"<small>{html.escape(run_name)} reached its {train['max_steps']:,} steps; add extra steps to train "
                    "it further.</small>")
        return (f"<small>{html.escape(run_name)} stopped at step {at:,} of {train['max_steps']:,}: Resume trains it from "
                f"there to step **{total:,}** ({total - at:,} more steps{time_text}); the learning rate continues from "
                "where it was and decays to its minimum at the new end.</small>")
    def resume(self, run_name, extra_steps, request: gr.Request):
        """Continue a stopped or finished run from its last checkpoint; `extra_steps` more steps are added to
        its total and the learning rate continues from where it was. Called with raw values (preprocess off):
        every input is checked here and named in the message."""
        session = self.store.get(_sid(request))
        try:
            if run_name is not None and not isinstance(run_name, str):
                raise UserError(f"Run to resume: must be a run name, got {short(run_name)}")
            ok, extra, why = parse_number(extra_steps, int, optional=True)
            if not ok:
                raise UserError(f"Extra steps: {why}")
            extra = extra or 0
            if extra < 0:
                raise UserError(f"Extra steps: is {extra}; use 0 (continue to the run's total) or more")
            with session.lock:
                if self._active(session):
                    raise UserError("A training of this session is already running; stop it first")
                names = list(session.runs)
                if not names:
                    raise UserError("Resume: this session has no run yet; start one with Train")
                run = session.run(run_name or names[-1])
                if run.readonly:
                    raise UserError(f"Run to resume: {run.name} is listed from a folder of runs (--runs), read "
                                    "only; fine-tune it (Train → Start from) to train a copy")
                self.store.check_disk("Resume")
                entry = self._resume_entry(run, extra)
                entry.client = client_address(request)
                old = run.job.events if run.job else history_events(run.dir)  # the curve so far, after a restart
                keep = [e for e in old if isinstance(e, (StepEvent, EvalEvent, SampleEvent))
                        and e.step <= entry.resume_step]
                entry.events[:0], entry.carried = keep, len(keep)
                self.store.queue.submit(entry)  # QueueFull: the run keeps its last training
                run.job = entry
                session.followed = run.name
        except Exception as e:
            yield self._refused(_train_error(e))
            return
        yield from follow(self.store, run.job, run.name)

    def _resume_entry(self, run: SessionRun, extra: int) -> QueuedTraining:
        import json

        from ..training.checkpoint import latest_checkpoint
        from ..training.run import INIT_WEIGHTS

        ckpt = latest_checkpoint(run.dir)
        if ckpt is None and not (run.dir / INIT_WEIGHTS).is_file():  # (a pruned run starts from its init weights)
            raise UserError(f"Resume: {run.name} has no checkpoint yet; train it first")
        state = json.loads((ckpt / "trainer_state.json").read_text()) if ckpt else {"step": 0}
        train = json.loads((run.dir / "run.json").read_text())["train"]
        step, elapsed = state["step"], float(state.get("elapsed_s", 0.0))
        max_steps, max_time = train["max_steps"] + extra, train.get("max_time")
        if max_steps > self.store.limits.max_steps:
            room = max(0, self.store.limits.max_steps - train["max_steps"])
            raise UserError(f"Extra steps: {run.name} would have {max_steps:,} steps in all; this app allows at "
                            f"most {self.store.limits.max_steps:,} (use at most {room:,} extra steps)")
        if extra == 0 and step >= train["max_steps"]:
            raise UserError(f"Resume: {run.name} already reached its {train['max_steps']:,} steps; add extra steps")
        if extra == 0 and max_time and elapsed >= max_time:
            raise UserError(f"Resume: {run.name} already used its time budget; add extra steps (they come with a "
                            "fresh budget of the same length)")
        if extra and max_time:
            from ..training.schedule import Segment

            seg = Segment.from_dict(json.loads((run.dir / "run.json").read_text()).get("schedule"))
            max_time = elapsed + (max_time - seg.start_elapsed)
        entry = QueuedTraining(None, run.dir, resume=True, extra_steps=extra, caps=self.store.limits.caps(),
                               mlflow_uri=self.store.mlflow_uri, max_steps=max_steps, max_time=max_time)
        entry.resume_step = step
        return entry

    def sample_at(self, run_name: str, step: int | float | str | None = None, request: gr.Request = None) -> str:
        """API: the sample a run took at (or just before) `step` (the Train tab's timeline)."""
        session = self.store.get(_sid(request))
        if not isinstance(run_name, str) or run_name not in session.runs:
            return "Pick one of this session's runs."
        ok, number, _ = parse_number(step, int, optional=True)
        job = session.runs[run_name].job
        return sample_at(job.events if job else [], number if ok else None)

    def timeline_sample(self, step, request: gr.Request) -> str:
        """The timeline slider moved: the sample of the run the Train tab follows."""
        session = self.store.get(_sid(request))
        return self.sample_at(session.followed, step, request) if session.followed else ""

    def preview(self, job_payload, files, oauth_token: gr.OAuthToken | None, request: gr.Request) -> str:
        """What Start would train: the model with the tokenizer's real vocabulary, tokens per parameter, ETA."""
        session = self.store.get(_sid(request))
        with reading_as(self.store.hub_token(oauth_token)):  # a Hub dataset or tokenizer: as the visitor
            return self._preview(job_payload, files, session)[0]

    def preview_view(self, job_payload, files, oauth_token: gr.OAuthToken | None, request: gr.Request):
        """The Train tab's preview and its Start button, which says what it will train. A page's previews run one
        at a time and only the newest asked for is shown: a slow one (the first, which reads the data) finishing
        after a quicker newer one would otherwise describe a model the form no longer holds."""
        page = _sid(request) or ""
        with self._previews_lock:
            if len(self._previews) > 10_000:  # pages come and go; a bound on what is remembered
                self._previews.clear()
            turn = self._previews.setdefault(page, [0, threading.Lock()])
            turn[0] += 1
            mine = turn[0]
        with turn[1]:
            if turn[0] != mine:  # a newer preview was asked for while this one waited
                return gr.skip(), gr.skip()
            session = self.store.get(page)
            with reading_as(self.store.hub_token(oauth_token)):
                text, label = self._preview(job_payload, files, session)
        if turn[0] != mine:
            return gr.skip(), gr.skip()
        return text, gr.update(value=label or "Start training")

    def _preview(self, job_payload, files, session) -> tuple[str, str | None]:
        """(the preview's text, the Start button's label when the model is known)."""
        from ..training.preview import preview_run, session_speed

        try:
            job = self.parse_job(job_payload, session, check_caps=False)  # the caps are shown below the preview
            source = None
            if job.init_from:  # fine-tuning: the source's architecture and tokenizer train, not the Build tab's
                from ..training.data import is_hub_id
                from ..training.run import open_run
                from .grow_actions import _finished_run

                if job.init_from not in session.runs and is_hub_id(job.init_from):
                    return (f"- 🌱 **Fine-tuning {html.escape(job.init_from)}** from the Hub: its architecture, "
                            "size and vocabulary are read (and checked against this app's caps) when the run starts",
                            f"Start training · fine-tune {job.init_from}")
                source = open_run(_finished_run(session, job.init_from, "init_from").dir, load_data=False)
            if job.data.source == "files":
                if not files:
                    return "Upload data files to see what this run will train.", None
                job.data.paths = copy_data_uploads(files, session.root / "uploads",
                                                   self.store.limits.max_upload_mb, session.uploads)
            speed = session_speed([(r.dir, r.job.events) for r in reversed(list(session.runs.values())) if r.job])
            p = preview_run(job, session.preview_cache, speed, start_from=source)
            from ..training.job import model_cap_problems

            caps = self.store.limits.caps()  # the limits on the model the tokenizer's vocabulary really gives
            why = (f"the run keeps the {p.tokenizer_kind} tokenizer of {p.source}, so " if p.source else
                   f"with the {p.tokenizer_kind} tokenizer the vocabulary is {p.vocab_size:,} tokens, so ")
            over = [q for q in job.cap_problems(caps) if q.path != "spec" and q.path != "train.batch_size"]
            over += model_cap_problems(p.spec, job.train, caps, why)
            text = preview_markdown(p, job) + ("\n\n" + job_problems(JobError(over)) if over else "")
            return text, start_label(p, job.spec.name)
        except JobError as e:
            return job_problems(e), None
        except Exception as e:
            return f"⚠️ {html.escape(_friendly(e))}", None

    # ----------------------------------------------------------------------------- generate
    def _model(self, session, name: str):
        """(model, tokenizer) of a run or an import of this session, from the app's model cache (models.py):
        read from its folder when it is not loaded, or no longer."""
        from ..sharing.importer import import_hf
        from ..training.checkpoint import latest_checkpoint
        from ..training.run import open_run

        version = None
        if name in session.runs:
            ckpt = latest_checkpoint(session.runs[name].dir)  # a run that trained on since is read again
            version = (ckpt.name, ckpt.stat().st_mtime_ns) if ckpt is not None else None

            def load():
                run = open_run(session.runs[name].dir, load_data=False)
                return run.load_model(), run.tokenizer
        elif name in session.imports:
            def load():
                model, tok, _spec = import_hf(session.imports[name], caps=self.store.limits.caps())
                return model, tok
        else:
            raise UserError("Model: pick one of this session's runs or imported models")
        return self.store.models.get(session.id, name, load, version)

    @one_at_a_time("generate", "Generate", lambda message: f"⚠️ {message}")
    def generate(self, model_name, prompt, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                 weights, request: gr.Request):
        """Stream generated text for the prompt from one of this session's models."""
        session = self.store.get(_sid(request))
        try:
            if not model_name:
                raise UserError("Model: train a model first (Train tab) or import one (Share tab)")
            if prompt is None or prompt == "":
                raise UserError("Prompt: type some text to continue (a single newline works too)")
            self._check_prompt(prompt)
            model, tok = self._load_fresh(session, model_name)
            max_len = model.config.max_position_embeddings
            self._check_memory(model, len(tok(prompt, add_special_tokens=False)["input_ids"][-max_len:]),
                               cache_len=max_len)  # the prefill, and the cache generation allocates
            model = with_weights(model, weights)  # fp32 / bf16 / int8 / int4 (deploy.py)
            cfg = self._sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
            stop = threading.Event()
            deadline = time.time() + self.store.limits.generate_timeout_s
            text = ""
            for text in one_thread(chunked(stream_text(model, tok, prompt, cfg, stop=stop))):  # chunks, not tokens
                yield prompt + text
                if time.time() > deadline:
                    stop.set()
                    yield prompt + text + f"\n\n[stopped: the {self.store.limits.generate_timeout_s} s limit per " \
                                          "request was reached]"
                    return
        except Exception as e:
            yield f"⚠️ {_friendly(e)}"

    def _load_fresh(self, session, name):
        """A run's or an import's model, read again when training wrote a newer checkpoint since it was loaded."""
        if not isinstance(name, str):
            raise UserError(f"Model: pick one of this session's runs or imported models (got {short(name)})")
        return self._model(session, name)

    def _check_prompt(self, prompt) -> None:
        """A prompt is text of at most SLM_MAX_PROMPT_CHARS characters: checked before anything tokenizes it
        (tens of MB of prompt once took the whole app down)."""
        if not isinstance(prompt, str):
            raise UserError(f"Prompt: must be text, got {short(prompt)}")
        cap = self.store.limits.max_prompt_chars
        if len(prompt) > cap:
            raise UserError(f"Prompt: is {len(prompt):,} characters; this app takes at most {cap:,} (a model sees "
                            "only its last few hundred tokens anyway): shorten it")

    def _check_memory(self, model, tokens: int, explain: bool = False, cache_len: int = 0) -> None:
        """A prompt whose attention would take more than SLM_MAX_INFER_MB (masks and scores grow with heads x
        tokens²: 4,096 characters once took 4 GB in the app process) is refused before the model runs, with the
        longest prompt that fits."""
        from ..model.estimate import human
        from ..model.memory import inference_extra_bytes

        spec, cap = model.config.model_spec(), self.store.limits.max_infer_mb * 2**20

        def need(n):
            return inference_extra_bytes(spec, n, explain=explain, cache_len=cache_len)

        if need(tokens) <= cap:
            return
        lo, hi = 0, tokens  # the longest prompt that fits (need grows with the length)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if need(mid) <= cap else (lo, mid - 1)
        raise UserError(f"Prompt: {tokens:,} tokens would need about {human(need(tokens), 'B')} of memory for this "
                        f"model's attention, over this app's {human(cap, 'B')} per request; use at most {lo:,} "
                        "tokens (shorten the prompt)" if lo else
                        f"Model: this model needs about {human(need(1), 'B')} of memory per request, over this "
                        f"app's {human(cap, 'B')}; use a smaller model")

    @staticmethod
    def _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed) -> SamplingConfig:
        def num(v, name, default=None):
            ok, v, why = parse_number(v, float, optional=True)
            if not ok:
                raise UserError(f"{name}: {why}")
            return default if v is None else v

        n = int(min(max(num(max_new_tokens, "Max new tokens", 100), 1), 2000))
        t = num(temperature, "Temperature", 0.8)
        if t < 0:
            raise UserError("Temperature: use 0 (greedy) or a positive value such as 0.8")
        k = num(top_k, "Top-k", 0)
        p = num(top_p, "Top-p", 1.0)
        if not 0 < p <= 1:
            raise UserError("Top-p: use a value in (0, 1], e.g. 0.9 (1 = off)")
        rp = num(repetition_penalty, "Repetition penalty", 1.0)
        if rp <= 0:
            raise UserError("Repetition penalty: use a positive value (1 = off, 1.1–1.3 typical)")
        s = num(seed, "Seed")
        return SamplingConfig(max_new_tokens=n, temperature=min(t, 10.0), top_k=int(k) if k and k >= 1 else None,
                              top_p=None if p >= 1 else p, repetition_penalty=rp,
                              seed=int(s) if s is not None else None)

    @one_at_a_time("inspect", "Next tokens", lambda message: (pd.DataFrame(columns=["token", "probability"]),
                                                              f"⚠️ {message}"))
    def next_tokens(self, model_name, prompt, request: gr.Request):
        """The model's top next-token candidates for the prompt, with probabilities."""
        from .attention_view import shown

        session = self.store.get(_sid(request))
        try:
            model, tok, ids = self._inspected(session, model_name, prompt, last=True)
            rows = [{"token": repr(tok.decode([i])), "probability": round(p, 4)}
                    for i, p in next_token_distribution(model, ids, top=10)]
            return pd.DataFrame(rows), f"For the prompt `…{shown(prompt[-40:]).replace('`', 'ʼ')}` ({len(ids)} tokens)"
        except Exception as e:
            return pd.DataFrame(columns=["token", "probability"]), f"⚠️ {_friendly(e)}"

    @one_at_a_time("inspect", "Attention map", lambda message: ({"tokens": [], "weights": []}, f"⚠️ {message}"))
    def attention_map(self, model_name: str, prompt: str, layer: int | float | str | None = 0,
                      head: int | float | str | None = 0, request: gr.Request = None) -> tuple[dict, str]:
        """API: one attention head over the prompt's first tokens, as {"tokens": [...], "weights": [[...]]} (rows:
        queries, columns: keys), and a message. Raw values are checked here: text, lists or 1e400 as layer or head
        get a message naming the field."""
        session = self.store.get(_sid(request))
        empty = {"tokens": [], "weights": []}
        try:
            numbers = []
            for value, name in ((layer, "Attention layer"), (head, "Head")):
                ok, number, why = parse_number(value, int, optional=True)
                if not ok:
                    raise UserError(f"{name}: {why}")
                numbers.append(number or 0)
            model, tok, ids = self._inspected(session, model_name, prompt)
            ids = ids[:MAX_TOKENS]
            with torch.inference_mode():
                maps = model(torch.tensor([ids]), use_cache=False, output_attentions=True).attentions
            if not maps:
                raise UserError("This model has no attention layers")
            if not 0 <= numbers[0] < len(maps):
                raise UserError(f"Attention layer: choose 0…{len(maps) - 1}")
            if not 0 <= numbers[1] < maps[numbers[0]].shape[1]:
                raise UserError(f"Head: choose 0…{maps[numbers[0]].shape[1] - 1}")
            weights = maps[numbers[0]][0, numbers[1]].float()
            return {"tokens": [tok.decode([i]) for i in ids],
                    "weights": [[round(float(w), 5) for w in row] for row in weights]}, ""
        except Exception as e:
            return empty, f"⚠️ {_friendly(e)}"

    @one_at_a_time("inspect", "Attention", lambda message: f"⚠️ {html.escape(message)}")
    def attention_heads(self, model_name, prompt, layer, request: gr.Request) -> str:
        """Every head of one attention layer side by side (attention_view.py), as HTML for the Generate tab."""
        from .attention_view import attention_heads

        session = self.store.get(_sid(request))
        try:
            ok, number, why = parse_number(layer, int, optional=True)
            if not ok:
                raise UserError(f"Attention layer: {why}")
            model, tok, ids = self._inspected(session, model_name, prompt)
            return attention_heads(model, tok, ids, number or 0)
        except Exception as e:
            return f"⚠️ {html.escape(_friendly(e))}"

    @one_at_a_time("inspect", "Experts", lambda message: f"⚠️ {html.escape(message)}")
    def experts(self, model_name, prompt, request: gr.Request) -> str:
        """Which experts each prompt token goes to in every mixture-of-experts layer, and the memory generation
        keeps per sequence (attention's KV cache beside the fixed state of Mamba2 / convolution layers)."""
        from .attention_view import expert_view

        session = self.store.get(_sid(request))
        try:
            model, tok, ids = self._inspected(session, model_name, prompt)
            return expert_view(model, tok, ids)
        except Exception as e:
            return f"⚠️ {html.escape(_friendly(e))}"

    @one_at_a_time("inspect", "Next tokens", lambda message: f"⚠️ {html.escape(message)}")
    def next_bars(self, model_name, prompt, temperature, top_k, top_p, request: gr.Request) -> str:
        """The next-token probabilities of the prompt as bars, filtered as these sampling settings would."""
        from .attention_view import next_token_bars

        session = self.store.get(_sid(request))
        try:
            if not model_name:
                return "<small>Pick a model to see what it thinks comes next.</small>"
            model, tok, ids = self._inspected(session, model_name, prompt, last=True)
            cfg = self._sampling(1, temperature, top_k, top_p, 1.0, None)
            return next_token_bars(model, tok, ids, prompt, cfg)
        except Exception as e:
            return f"⚠️ {html.escape(_friendly(e))}"

    def append_token(self, model_name, prompt, evt: gr.EventData, request: gr.Request):
        """A bar of the next-token view was clicked: its token goes at the end of the prompt."""
        session = self.store.get(_sid(request))
        token = (getattr(evt, "_data", None) or {}).get("token")
        try:
            _, tok = self._load_fresh(session, model_name)
            return (prompt or "") + tok.decode([int(token)])
        except Exception:  # a stale bar (another model picked since): the prompt stays as it is
            return gr.update()

    def _inspected(self, session, model_name, prompt, last: bool = False):
        """(model, tokenizer, prompt ids) for an inspect view, checked: the prompt's length, the memory its
        attention takes (explain mode keeps every layer's map) and that it has tokens at all."""
        from .attention_view import MAX_TOKENS as SHOWN

        if not prompt:
            raise UserError("Prompt: type some text first")
        self._check_prompt(prompt)
        model, tok = self._load_fresh(session, model_name)
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserError("Prompt: the tokenizer produced no tokens for this text")
        if last:
            ids = ids[-model.config.max_position_embeddings:]
            self._check_memory(model, len(ids))
        else:
            ids = ids[:min(SHOWN, model.config.max_position_embeddings)]
            self._check_memory(model, len(ids), explain=True)
        return model, tok, ids

    # ----------------------------------------------------------------------------- compare
    def compare(self, everyone: bool, x_axis: str, y_axis: str = "loss", request: gr.Request = None):
        """(table of runs, overlaid train/validation curves, bits per character vs parameters scatter, message)."""
        from .compare import compare_frames, curves_plot, empty_curves, empty_scatter

        session = self.store.get(_sid(request))
        try:  # (damaged records and an unreadable store are handled inside, with a message)
            table, curves, scatter, msg = compare_frames(session, self.store.mlflow_uri if everyone else None, x_axis,
                                                         y_axis)
        except Exception as e:
            log.exception("compare failed")
            table, curves, scatter, msg = pd.DataFrame(), empty_curves(), empty_scatter(), f"⚠️ {_friendly(e)}"
        return table, curves_plot(curves, x_axis, y_axis), scatter, msg

    def class_board(self):
        """(everyone's runs on this server ranked by held-out bits per character, per data set; a message)."""
        from .compare import BOARD_COLUMNS, STORE_UNREADABLE, class_board

        try:
            board = class_board(self.store.mlflow_uri)
            return board, ("No run on this server has a held-out score yet: runs join the board at their first "
                           "evaluation." if board.empty else "")
        except Exception:
            log.warning("class board: the MLflow store cannot be read", exc_info=True)
            return pd.DataFrame(columns=BOARD_COLUMNS), STORE_UNREADABLE + " the board is back when it is."

    @staticmethod
    def redraw_legends(scatter):
        """Second step of Compare's Refresh. Gradio's plots keep the colour domain of the data they were first
        drawn with (new data only replaces the points), so a run added since is invisible; a new legend list
        makes the scatter redraw from the data the first step sent."""
        get = (lambda k: scatter.get(k)) if isinstance(scatter, dict) else (lambda k: getattr(scatter, k, None))
        columns, data = get("columns") or [], get("data") or []
        runs = list(dict.fromkeys(row[columns.index("run")] for row in data)) if "run" in columns else []
        return gr.ScatterPlot(colors_in_legend=runs)

    # ----------------------------------------------------------------------------- share
    def export(self, run_name, request: gr.Request):
        """Export a run as a verified Hugging Face folder; returns (zip path, result, card preview)."""
        from ..sharing.export import export_run

        session = self.store.get(_sid(request))
        try:
            if not run_name:
                raise UserError("Run: train a model first, then pick it here")
            run = session.run(run_name)
            if run.job and not run.job.finished:
                raise UserError(f"Run: {run_name} is still training; stop it or wait until it finishes")
            session.check_quota(self.store.limits, "Export")
            self.store.check_disk("Export")
            out = session.root / "exports" / run.name
            r = export_run(run.dir, out, overwrite=True)
            session.exports[run.name] = out
            archive = archive_for_download(session.id, out, f"{run.name}-hf")
            kind = ("native transformers class — loads with no remote code" if r.native else
                    f"custom code (load with trust_remote_code=True) because "
                    f"{html.escape(scrub(r.why_not_native))}")
            result = (f"✅ Exported **{r.model_class}** ({kind}).\n\nVerified in a fresh process: max |Δlogits| "
                      f"{r.max_abs_diff:.2e}, greedy continuation {'identical' if r.greedy_match else 'different'}.")
            return archive, result, card_preview(out)
        except Exception as e:
            return None, f"❌ {html.escape(_friendly(e))}", ""

    def push(self, run_name, repo_id, token_text, private, oauth_token: gr.OAuthToken | None,
             request: gr.Request):
        """Push an exported run to the Hub with the user's own token: from Sign in with HF or the field. The
        server's token (HF_TOKEN, `hf auth login`) is never used on a shared server; a local owner can allow it
        with SLM_ALLOW_LOCAL_TOKEN=1 (ignored on Spaces)."""
        from ..sharing.hub import HubError, push_to_hub

        session = self.store.get(_sid(request))
        token = (oauth_token.token if oauth_token else None) or \
            (token_text.strip() if isinstance(token_text, str) else "") or None
        if token is None and self.store.limits.use_ambient_token:
            from huggingface_hub import get_token

            token = get_token()
        try:
            if not isinstance(run_name, str) or run_name not in session.exports:
                raise UserError("Push: export this run first (Export button above)")
            if not token:
                raise UserError("Token: sign in with Hugging Face or paste a token with write access; this app "
                                "never pushes with the server's own token")
            r = push_to_hub(session.exports[run_name], repo_id, token, private=bool(private))
            return f"✅ Published **{r.repo_id}** ({'private' if r.private else 'public'}): {r.url}"
        except (HubError, UserError) as e:
            msg = str(e).replace(token, "***") if token else str(e)
            return f"❌ {html.escape(msg)}"
        except Exception as e:
            msg = _friendly(e)
            return f"❌ {html.escape(msg.replace(token, '***') if token else msg)}"

    @one_at_a_time("import", "Import", lambda message: f"❌ {message}")
    def import_folder(self, files, request: gr.Request) -> str:
        """Import an exported / native checkpoint (uploaded files of one folder) as a model to generate with."""
        from ..sharing.importer import import_hf

        session = self.store.get(_sid(request))
        folder = None
        try:
            if not files:
                raise UserError("Import: upload the .zip from Export, or the files of an exported folder "
                                "(config.json, model.safetensors, tokenizer files)")
            sources = [Path(f if isinstance(f, str) else f.name) for f in (files if isinstance(files, list)
                                                                           else [files])]
            for src in sources:
                refuse_pickle(src, "Import")
            size = sum(src.stat().st_size for src in sources)
            if size > self.store.limits.max_upload_request_bytes:
                raise UserError(f"Import: the files hold {size / 2**20:,.0f} MB, more than a model this app allows "
                                f"({self.store.limits.max_upload_request_bytes / 2**20:,.0f} MB)")
            session.check_room(self.store.limits, "Import")
            self.store.check_disk("Import")
            name = session.new_run_name("imported")
            folder = session.root / "imports" / name
            folder.mkdir(parents=True, exist_ok=True)
            # the files, or the export's own .zip (unpacked to at most the same size: weights barely compress)
            gather_import_files(sources, folder, self.store.limits.max_upload_request_bytes)
            for src in sources:  # the session has its copy now: Gradio's goes at once
                discard_upload(src)
            model, tok, spec = import_hf(folder, caps=self.store.limits.caps())  # caps: before allocating
            if tok is None:
                raise UserError("Import: the folder has no tokenizer files (tokenizer.json, tokenizer_config.json)")
            session.imports[name] = folder  # on disk: read again from here if the model cache lets it go
            session.followed = name  # the model the learner is on now: Generate's picker shows it
            self.store.models.put(session.id, name, (model, tok))
            return f"✅ Imported as **{name}** ({html.escape(spec.summary())}); pick it on the Generate tab."
        except Exception as e:
            if folder is not None:  # a failed import leaves no files behind
                shutil.rmtree(folder, ignore_errors=True)
            return f"❌ {html.escape(_friendly(e))}"
