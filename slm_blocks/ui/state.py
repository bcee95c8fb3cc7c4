"""Per-session state and the limits a Space owner sets by environment variables.

Everything a user creates (runs, jobs, loaded models) lives in a `Session` keyed by Gradio's session hash
and under that session's own folder; nothing of a user's sits in module globals. The only shared objects
are the training queue (whose turn it is) and the session registry itself. Closing the tab (demo.unload)
stops the session's jobs and frees its memory and temporary files.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from ..training.job import Caps
from ..training.jobs import QueuedTraining, TrainingQueue


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass(frozen=True)
class Limits:
    """Caps for one app process; a Space owner tunes them with SLM_* environment variables (from_env)."""

    data_dir: Path = Path.home() / ".slm-blocks"
    max_params: int = 30_000_000
    max_steps: int = 20_000
    max_time_s: int = 3600
    max_concurrent: int = 1
    max_upload_mb: int = 50
    max_runs_per_session: int = 10
    generate_timeout_s: int = 60
    session_quota_mb: int = 1024  # disk per session (runs, uploads, exports)
    max_train_mb: int = 8192  # training memory of one run, from the estimate (weights, grads, AdamW, activations)

    @classmethod
    def from_env(cls) -> "Limits":
        return cls(data_dir=Path(os.environ.get("SLM_DATA_DIR", cls.data_dir)),
                   max_params=_env_int("SLM_MAX_PARAMS", cls.max_params),
                   max_steps=_env_int("SLM_MAX_STEPS", cls.max_steps),
                   max_time_s=_env_int("SLM_MAX_TIME", cls.max_time_s),
                   max_concurrent=_env_int("SLM_MAX_CONCURRENT_TRAININGS", cls.max_concurrent),
                   max_upload_mb=_env_int("SLM_MAX_UPLOAD_MB", cls.max_upload_mb),
                   max_runs_per_session=_env_int("SLM_MAX_RUNS_PER_SESSION", cls.max_runs_per_session),
                   generate_timeout_s=_env_int("SLM_GENERATE_TIMEOUT", cls.generate_timeout_s),
                   session_quota_mb=_env_int("SLM_SESSION_QUOTA_MB", cls.session_quota_mb),
                   max_train_mb=_env_int("SLM_MAX_TRAIN_MB", cls.max_train_mb))

    def caps(self) -> Caps:
        """The limits a training job is checked against (before it starts, and on the real vocabulary)."""
        return Caps(max_params=self.max_params, max_train_mb=self.max_train_mb, max_steps=self.max_steps,
                    max_time_s=self.max_time_s)


def safe_name(text: str, fallback: str = "run") -> str:
    """A file-system-safe name: ASCII letters, digits, '-', '_' only (no '..', '/', NUL or odd Unicode)."""
    text = unicodedata.normalize("NFKD", str(text or "")).encode("ascii", "ignore").decode()
    text = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-_")[:48]
    return text or fallback


def safe_filename(name: str) -> str:
    """A safe base name that keeps its lowercase extension ("../../x.JSON" -> "x.json"); extensions up to 16
    characters survive whole, so "model.safetensors" stays "model.safetensors" (import looks for that name)."""
    base = Path(str(name or "")).name
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    ext = re.sub(r"[^a-z0-9]", "", ext.lower())[:16]
    return safe_name(stem, "file") + (f".{ext}" if ext else "")


@dataclass
class SessionRun:
    name: str
    dir: Path
    job: QueuedTraining | None = None


@dataclass
class Session:
    id: str
    root: Path
    runs: dict[str, SessionRun] = field(default_factory=dict)
    models: dict[str, tuple] = field(default_factory=dict)  # name -> (model, tokenizer), loaded for generation
    exports: dict[str, Path] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one training start at a time per session
    preview_cache: dict = field(default_factory=dict)  # (data, tokenizer) choice -> vocabulary and token counts
    followed: str = ""  # the run the Train tab follows (the last one started or resumed)

    def new_run_name(self, wanted: str) -> str:
        base = safe_name(wanted, "run")
        name, i = base, 2
        while name in self.runs or (self.root / "runs" / name).exists():
            name, i = f"{base}-{i}", i + 1
        return name

    def disk_mb(self) -> float:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file()) / 2**20

    def run(self, name: str) -> SessionRun:
        if name not in self.runs:
            from ..training.schema import short

            raise ValueError(f"run {short(name)} is not one of this session's runs; pick one from the list")
        return self.runs[name]


class SessionStore:
    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits.from_env()
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()
        self.queue = TrainingQueue(self.limits.max_concurrent)

    def get(self, session_id: str | None) -> Session:
        sid = safe_name(session_id or "local", "local")
        with self.lock:
            if sid not in self.sessions:
                root = self.limits.data_dir / "sessions" / sid
                root.mkdir(parents=True, exist_ok=True)
                self.sessions[sid] = Session(sid, root)
            return self.sessions[sid]

    def close(self, session_id: str | None) -> None:
        """The tab was closed: stop its trainings, drop its models, delete its files."""
        sid = safe_name(session_id or "local", "local")
        with self.lock:
            session = self.sessions.pop(sid, None)
        if session is None:
            return
        for r in session.runs.values():
            if r.job and not r.job.finished:
                self.queue.cancel(r.job)
        session.models.clear()
        threading.Thread(target=self._remove_later, args=(session,), daemon=True).start()

    def _remove_later(self, session: Session) -> None:
        for r in session.runs.values():  # give workers time to write their stop checkpoint and exit
            if r.job and r.job.proc:
                try:
                    r.job.proc.wait(timeout=60)
                except Exception:
                    r.job.kill()
        shutil.rmtree(session.root, ignore_errors=True)

    @property
    def mlflow_uri(self) -> str:
        from ..training.tracking import tracking_uri

        return tracking_uri(self.limits.data_dir)
