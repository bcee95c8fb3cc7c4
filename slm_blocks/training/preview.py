"""What a job will train, before it starts: the model with the vocabulary its tokenizer really gives, the
data in tokens, tokens per parameter and an ETA.

The Build tab counts parameters with the spec's own vocab_size; training replaces it with the tokenizer's
(prepare_run), which can move the count a lot (the gpt2 preset: 5.85M on Build, 4.82M with a char tokenizer
on the built-in stories). The expensive part (load the data, build the tokenizer, count tokens) depends only
on the data and tokenizer settings, so it is cached per choice in a dict the caller keeps (one per app
session: nothing here is shared between users).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..model.estimate import estimate
from .job import Job

CHINCHILLA_TOKENS_PER_PARAM = 20
# Share of the measured matmul peak a small model's training step reaches (measured here: 0.55-0.6 for the
# tiny-char and gpt2 presets on one CPU thread); an ETA, not a promise.
EFFICIENCY = 0.5
_PEAK: dict[int, float] = {}  # threads -> FLOP/s of this machine (a property of the machine, not of a user)


@dataclass(frozen=True)
class DataFacts:
    vocab_size: int
    train_tokens: int
    val_tokens: int
    name: str
    distinct_chars: int


@dataclass(frozen=True)
class RunPreview:
    summary: str  # the architecture, block by block
    vocab_size: int
    params: int
    spec_params: int  # with the spec's own vocab_size (what the Build tab shows)
    train_bytes: int  # training memory estimate
    data: DataFacts
    tokens_per_step: int
    steps: int  # steps the run will reach (fewer than max_steps when the time budget ends it first)
    tokens: int  # training tokens the run will see
    eta_s: float
    ends_by: str  # "steps" | "time"
    speed_from: str  # how the speed was estimated
    spec: object = None  # the ModelSpec that will train (the source's when the run starts from one)
    source: str = ""  # the run it starts from (fine-tuning), "" for random weights
    tokenizer_kind: str = ""  # the tokenizer that trains: the job's, or the source's when it starts from one

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / max(1, self.params)

    @property
    def epochs(self) -> float:
        return self.tokens / max(1, self.data.train_tokens)


def data_key(job: Job) -> str:
    """What the expensive part depends on: data + tokenizer settings (files by size and time too)."""
    files = []
    for p in job.data.paths:
        try:
            st = os.stat(p)
            files.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            files.append((p, None, None))
    return json.dumps([job.data.to_dict(), job.tokenizer.to_dict(), files], sort_keys=True, default=str)


def data_facts(job: Job, cache: dict | None = None, tokenizer=None, tokenizer_from: str = "") -> DataFacts:
    """Load the data, build the tokenizer and count tokens exactly as prepare_run will (cached per choice).
    `tokenizer`: a source run's own (fine-tuning keeps it), named by `tokenizer_from` in the cache key."""
    from .data import load_corpus
    from .run import _encode_corpus
    from .tokenization import build_tokenizer

    key = data_key(job) + (f"|tokenizer of {tokenizer_from}" if tokenizer is not None else "")
    if cache is not None and key in cache:
        return cache[key]
    corpus = load_corpus(job.data)
    t = job.tokenizer
    tok = tokenizer if tokenizer is not None else build_tokenizer(t.kind, corpus.train_text, t.vocab_size,
                                                                  t.name_or_path)
    train_ids, val_ids = _encode_corpus(tok, corpus)
    facts = DataFacts(len(tok), len(train_ids), len(val_ids), corpus.name,
                      len(set(corpus.train_text) | set(corpus.val_text)))
    if cache is not None:
        if len(cache) >= 16:
            cache.pop(next(iter(cache)))
        cache[key] = facts
    return facts


def machine_flops() -> float:
    """fp32 matmul FLOP/s with the current torch threads, measured once (~0.2 s)."""
    import torch

    threads = torch.get_num_threads()
    if threads not in _PEAK:
        a, b = torch.randn(384, 384), torch.randn(384, 384)
        a @ b
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.2:
            a @ b
            n += 1
        _PEAK[threads] = n * 2 * 384**3 / (time.perf_counter() - t0)
    return _PEAK[threads]


def preview_run(job: Job, cache: dict | None = None, flops_per_s: float | None = None,
                start_from=None) -> RunPreview:
    """The preview of `job`. `flops_per_s`: a measured training speed (e.g. from this session's last run);
    without one the machine's matmul speed × EFFICIENCY is used. `start_from`: the finished run (open_run,
    without data) a fine-tuning job starts from: its architecture and tokenizer train, not the job's."""
    if start_from is not None:
        facts = data_facts(job, cache, start_from.tokenizer, str(start_from.dir))
        spec = start_from.spec
    else:
        facts = data_facts(job, cache)
        spec = job.spec.copy(vocab_size=facts.vocab_size)
    t = job.train
    seq = t.seq_len or spec.max_seq_len
    e = estimate(spec, batch_size=t.batch_size, seq_len=seq)
    tokens_per_step = t.batch_size * seq * t.grad_accum
    speed_from = "your last run's speed" if flops_per_s else "this machine's matmul speed"
    flops = flops_per_s or machine_flops() * EFFICIENCY
    step_s = e.flops_per_token_train * tokens_per_step / max(flops, 1.0)
    steps, ends_by = t.max_steps, "steps"
    if t.max_time is not None and step_s * t.max_steps > t.max_time:
        steps, ends_by = max(1, int(t.max_time / step_s)), "time"
    return RunPreview(summary=architecture(spec), vocab_size=spec.vocab_size, params=e.params,
                      spec_params=e.params if start_from is not None else estimate(job.spec).params,
                      train_bytes=e.train_total_bytes, data=facts,
                      tokens_per_step=tokens_per_step, steps=steps, tokens=steps * tokens_per_step,
                      eta_s=min(step_s * t.max_steps, t.max_time or float("inf")), ends_by=ends_by,
                      speed_from=speed_from, spec=spec, source=start_from.dir.name if start_from else "",
                      tokenizer_kind=(start_from.tokenizer_config if start_from else job.tokenizer).kind)


def architecture(spec) -> str:
    """The model block by block, with the sizes that decide its cost (each block's own description)."""
    parts = [f"{name} ({details})" if details else name for name, details in spec.describe()]
    return f"d_model {spec.d_model}, context {spec.max_seq_len}: " + " → ".join(parts)


def session_speed(run_dirs_and_events) -> float | None:
    """Training FLOP/s measured by the newest finished run among (run_dir, events) pairs, or None."""
    from ..model.spec import ModelSpec
    from .events import StepEvent

    for run_dir, events in run_dirs_and_events:
        steps = [e for e in events if isinstance(e, StepEvent) and e.tokens_per_s > 0]
        if len(steps) < 2:
            continue
        try:
            record = json.loads((Path(run_dir) / "run.json").read_text())
            spec = ModelSpec.from_dict(record["spec"])
            seq = record["train"].get("seq_len") or spec.max_seq_len
        except (OSError, ValueError, KeyError):
            continue
        return steps[-1].tokens_per_s * estimate(spec, seq_len=seq).flops_per_token_train
    return None
