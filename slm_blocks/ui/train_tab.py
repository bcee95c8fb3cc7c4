"""Train tab: data, tokenizer and hyperparameters; Start streams status, loss curves and samples; Stop / Resume.

Training runs in a worker process behind the shared queue (jobs.py), so the app stays responsive and a
crash in training cannot take it down. These functions are also the /train, /stop and /resume API.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd

from .. import ModelSpec, SpecError, estimate
from ..training.data import builtin_datasets
from ..model.estimate import human
from ..training.jobs import TrainingJob
from .state import SessionStore, safe_name

REFUSED_UPLOADS = {".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib"}
DATA_UPLOADS = {".txt", ".md", ".jsonl", ".json", ".csv", ".parquet"}


class UserError(ValueError):
    """A problem the user can fix; shown as is."""


def _uploads(store: SessionStore, session, files) -> list[str]:
    if not files:
        raise UserError("Upload: no file was given; choose one or more .txt/.md/.jsonl/.json/.csv/.parquet files")
    out_dir = session.root / "uploads"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files if isinstance(files, list) else [files]:
        src = Path(f if isinstance(f, str) else getattr(f, "name", f))
        ext = src.suffix.lower()
        if ext in REFUSED_UPLOADS:
            raise UserError(f"Upload: {src.name!r} is a pickle/binary weights file; only text data files are "
                            "accepted here (and model weights only as safetensors)")
        if ext not in DATA_UPLOADS:
            raise UserError(f"Upload: {src.name!r} has an unsupported type; use .txt, .md, .jsonl, .json, .csv "
                            "or .parquet")
        if src.stat().st_size > store.limits.max_upload_mb * 1024 * 1024:
            raise UserError(f"Upload: {src.name!r} is larger than {store.limits.max_upload_mb} MB; use a smaller "
                            "file or a Hub dataset")
        dest = out_dir / (safe_name(src.stem, "data") + ext)
        shutil.copyfile(src, dest)
        paths.append(str(dest))
    return paths


def make_job(store: SessionStore, session, spec_json: str, data_source: str, builtin: str, files, hub_id: str,
             hub_config: str, text_column: str, tokenizer: str, vocab_size, tokenizer_name: str, max_steps,
             batch_size, lr, max_time, seed, eval_every) -> tuple[dict, str]:
    """Check every input and build the worker's job description; UserError names the field and the fix."""
    try:
        spec = ModelSpec.from_json(spec_json or "")
    except SpecError as e:
        raise UserError("The model spec has problems (see the Build tab):\n" + "\n".join(f"- {p}" for p in e.problems))
    lim = store.limits
    params = estimate(spec).params
    if params > lim.max_params:
        raise UserError(f"Model: {human(params)} parameters is over this app's cap of {human(lim.max_params)}; "
                        "make d_model or the number of layers smaller")
    if data_source == "Built-in":
        if builtin not in builtin_datasets():
            raise UserError(f"Built-in dataset: choose one of {', '.join(builtin_datasets())}")
        data = {"source": "builtin", "name": builtin}
    elif data_source == "Upload":
        data = {"source": "files", "paths": _uploads(store, session, files), "text_column": text_column or None}
    elif data_source == "Hub":
        if not (hub_id or "").strip():
            raise UserError("Hub dataset: enter a dataset id such as 'user/dataset'")
        data = {"source": "hub", "hub_id": hub_id.strip(), "hub_config": (hub_config or "").strip() or None,
                "text_column": (text_column or "").strip() or None, "max_chars": 5_000_000}
    else:
        raise UserError("Data source: choose Built-in, Upload or Hub")

    def number(value, name, lo, hi, integer=True):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{name}: enter a number between {lo} and {hi}") from None
        if not (lo <= v <= hi):
            raise UserError(f"{name}: {value} is outside {lo}…{hi}")
        return int(v) if integer else v

    tok = {"kind": tokenizer, "vocab_size": None, "name_or_path": None}
    if tokenizer == "bpe":
        tok["vocab_size"] = number(vocab_size, "BPE vocab size", 259, 65536)
    elif tokenizer == "pretrained":
        if not (tokenizer_name or "").strip():
            raise UserError("Pretrained tokenizer: enter a Hub id or a local folder")
        tok["name_or_path"] = tokenizer_name.strip()
    elif tokenizer not in ("char", "byte"):
        raise UserError("Tokenizer: choose char, byte, bpe or pretrained")
    steps = number(max_steps, "Max steps", 1, lim.max_steps)
    train = {"max_steps": steps, "batch_size": number(batch_size, "Batch size", 1, 512),
             "lr": number(lr, "Learning rate", 1e-6, 1.0, integer=False), "seed": number(seed, "Seed", 0, 2**31 - 1),
             "max_time": number(max_time or lim.max_time_s, "Max time (s)", 1, lim.max_time_s, integer=False),
             "eval_every": number(eval_every, "Eval every", 1, 100_000), "warmup_steps": min(100, steps // 10),
             "log_every": max(1, min(10, steps // 50)), "checkpoint_every": max(50, steps // 4),
             "sample_tokens": min(200, spec.max_seq_len * 3)}
    return {"spec": spec.to_dict(), "data": data, "tokenizer": tok, "train": train,
            "mlflow_uri": store.mlflow_uri}, spec.summary()


def loss_frame(events: list[dict]) -> pd.DataFrame:
    rows = [{"step": e["step"], "loss": e["loss"], "split": "train"} for e in events if e.get("event") == "StepEvent"]
    rows += [{"step": e["step"], "loss": e["val_loss"], "split": "validation"} for e in events
             if e.get("event") == "EvalEvent"]
    # Gradio's plot fixes its axis types and colour domain from the first frame it draws: keep the columns
    # numeric even when empty, and give both splits a row from the start (loss NaN: not drawn)
    first = min((r["step"] for r in rows), default=0)
    rows += [{"step": first, "loss": float("nan"), "split": split} for split in ("train", "validation")
             if not any(r["split"] == split for r in rows)]
    return pd.DataFrame(rows, columns=["step", "loss", "split"]).astype({"step": "int64", "loss": "float64"})


def progress_html(done: int, total: int) -> str:
    pct = 100 * done / max(total, 1)
    return (f"<div style='background:#e5e7eb;border-radius:6px;height:12px'><div style='background:#22c55e;"
            f"width:{pct:.1f}%;height:12px;border-radius:6px'></div></div>")


def describe(job: TrainingJob, position: int, max_steps: int) -> str:
    """Status markdown from the latest events: queue place, step, loss, tokens/s, ETA, final message."""
    steps = [e for e in job.events if e.get("event") == "StepEvent"]
    evals = [e for e in job.events if e.get("event") == "EvalEvent"]
    if job.status == "queued":
        return f"⏳ Waiting for a free trainer: you are number **{position}** in line."
    if job.status == "error":
        return f"❌ {job.message}"
    if job.status in ("done", "stopped"):
        head = "✅ Done" if job.status == "done" else "⏸️ Stopped (resumable)"
        last = f" · val loss {evals[-1]['val_loss']:.3f}, {evals[-1]['bits_per_char']:.3f} bits/char" if evals else ""
        return f"{head}: {job.message}{last}"
    if not steps:
        status = next((e["message"] for e in reversed(job.events) if e.get("event") == "status"), "starting")
        return f"🔄 Preparing: {status}…"
    s = steps[-1]
    val = f" · val loss {evals[-1]['val_loss']:.3f}" if evals else ""
    acc = f" · accuracy {evals[-1]['accuracy']:.0%}" if evals and evals[-1].get("accuracy") is not None else ""
    return (f"🏃 Step **{s['step']}/{max_steps}** · loss {s['loss']:.3f}{val}{acc} · lr {s['lr']:.2e} · "
            f"{s['tokens_per_s']:,.0f} tokens/s · ETA {s['eta_s']:.0f} s\n\n" + progress_html(s["step"], max_steps))


def follow(store: SessionStore, job: TrainingJob, max_steps: int, run_name: str):
    """Yield (status, plot frame, sample, log) as the job's events arrive, throttled to ~2 updates/s."""
    seen, last_yield = 0, 0.0
    while True:
        job.wait_for_change(seen, timeout=1.0)
        events = job.events
        now = time.time()
        if len(events) != seen and (now - last_yield > 0.5 or job.finished) or job.status == "queued":
            seen = len(events)
            last_yield = now
            samples = [e for e in events if e.get("event") == "SampleEvent"]
            sample = f"step {samples[-1]['step']}:\n{samples[-1]['text']}" if samples else ""
            log = "\n".join(_log_line(e) for e in events[-200:] if _log_line(e))
            yield (f"**{run_name}** — " + describe(job, store.queue.position(job), max_steps), loss_frame(events),
                   sample, log)
        if job.finished and seen == len(job.events):
            return


def _log_line(e: dict) -> str:
    kind = e.get("event")
    if kind == "StepEvent":
        return f"step {e['step']:>6} loss {e['loss']:.4f} lr {e['lr']:.2e} grad {e['grad_norm']:.2f}"
    if kind == "EvalEvent":
        return f"eval {e['step']:>6} val {e['val_loss']:.4f} ppl {e['perplexity']:.2f} bpc {e['bits_per_char']:.3f}"
    if kind in ("status", "warning", "error"):
        return f"{kind}: {e.get('message')}"
    if kind == "ready":
        return f"data {e['data']}: {e['train_tokens']:,} training tokens, vocabulary {e['vocab_size']}"
    if kind == "CheckpointEvent":
        return f"checkpoint at step {e['step']}"
    if kind == "DoneEvent":
        return f"done: {e['message']}"
    return ""
