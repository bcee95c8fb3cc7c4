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
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from ..training.job import Caps
from ..training.jobs import QueuedTraining, TrainingQueue
from .workspace import LOCAL, disk_status, is_workspace, mode_from_env, scan_imports, scan_runs, touch
from .workspace import folder as workspace_folder



def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Limits:
    """Caps for one app process; a Space owner tunes them with SLM_* environment variables (from_env)."""

    data_dir: Path = Path.home() / ".slm-blocks"
    max_params: int = 30_000_000
    max_steps: int = 20_000
    max_time_s: int = 3600
    max_concurrent: int = 1
    max_upload_mb: int = 50
    uploads_per_client_mb: int = 1024  # uploaded by one client address within an hour (0: no cap)
    upload_space_mb: int = 4096  # Gradio's folder of uploads and downloads, all users together (0: no cap)
    max_runs_per_session: int = 10  # runs and imported models of one session
    model_cache_mb: int = 2048  # weights of the models loaded for generation, all sessions together
    import_timeout_s: int = 120  # reading one GGUF file (in a worker process)
    generate_timeout_s: int = 60
    session_quota_mb: int = 1024  # disk per session (runs, uploads, exports)
    max_train_mb: int = 8192  # training memory of one run, from the estimate (weights, grads, AdamW, activations)
    max_context: int = 4096  # longest context (max_seq_len) of a model trained or imported here
    max_prompt_chars: int = 10_000  # prompts of /generate, /next_tokens, /attention_map (checked before tokenizing)
    max_infer_mb: int = 1024  # memory one /generate, /next_tokens or /attention_map call may add to the weights
    max_request_kb: int = 4096  # any request body but an upload (a job is at most 64 KB; Compare sends its curves)
    max_pending_per_session: int = 16  # events of one session waiting or running in Gradio's queue
    session_idle_s: int = 1800  # a session without requests, training or open tab for this long is closed
    sweep_interval_s: float = 30.0  # how often the sweeper looks for idle sessions, orphans and the disk in use
    disk_budget_mb: int = 20480  # all sessions' files and MLflow artifacts; new work is refused above it
    max_trainings_per_client: int = 8  # trainings one client address may have queued or running (0: no cap)
    max_queued_trainings: int = 32  # trainings waiting for a trainer, all users together
    train_slice_s: int = 600  # while others wait, a training that ran this long is checkpointed and requeued
    allow_local_token: bool = False  # /push may fall back to the server's own Hub token (never on Spaces)
    mode: str = "shared"  # shared: a workspace per visitor; local: one for the person running it (workspace.py)
    workspace_ttl_s: int = 86_400  # an anonymous workspace unused this long is deleted (shared mode; 0: never)
    run_dirs: tuple = ()  # folders of runs listed too, read-only (`python app.py --runs DIR`; local mode)

    @classmethod
    def from_env(cls) -> "Limits":
        return cls(data_dir=Path(os.environ.get("SLM_DATA_DIR", cls.data_dir)),
                   max_params=_env_int("SLM_MAX_PARAMS", cls.max_params),
                   max_steps=_env_int("SLM_MAX_STEPS", cls.max_steps),
                   max_time_s=_env_int("SLM_MAX_TIME", cls.max_time_s),
                   max_concurrent=_env_int("SLM_MAX_CONCURRENT_TRAININGS", cls.max_concurrent),
                   max_upload_mb=_env_int("SLM_MAX_UPLOAD_MB", cls.max_upload_mb),
                   uploads_per_client_mb=_env_int("SLM_UPLOAD_MB_PER_CLIENT", cls.uploads_per_client_mb),
                   upload_space_mb=_env_int("SLM_UPLOAD_SPACE_MB", cls.upload_space_mb),
                   max_runs_per_session=_env_int("SLM_MAX_RUNS_PER_SESSION", cls.max_runs_per_session),
                   model_cache_mb=_env_int("SLM_MODEL_CACHE_MB", cls.model_cache_mb),
                   import_timeout_s=_env_int("SLM_IMPORT_TIMEOUT", cls.import_timeout_s),
                   generate_timeout_s=_env_int("SLM_GENERATE_TIMEOUT", cls.generate_timeout_s),
                   session_quota_mb=_env_int("SLM_SESSION_QUOTA_MB", cls.session_quota_mb),
                   max_train_mb=_env_int("SLM_MAX_TRAIN_MB", cls.max_train_mb),
                   max_context=_env_int("SLM_MAX_CONTEXT", cls.max_context),
                   max_prompt_chars=_env_int("SLM_MAX_PROMPT_CHARS", cls.max_prompt_chars),
                   max_infer_mb=_env_int("SLM_MAX_INFER_MB", cls.max_infer_mb),
                   max_request_kb=_env_int("SLM_MAX_REQUEST_KB", cls.max_request_kb),
                   max_pending_per_session=_env_int("SLM_MAX_PENDING_PER_SESSION", cls.max_pending_per_session),
                   session_idle_s=_env_int("SLM_SESSION_IDLE", cls.session_idle_s),
                   sweep_interval_s=_env_int("SLM_SWEEP_INTERVAL", cls.sweep_interval_s),
                   disk_budget_mb=_env_int("SLM_DISK_BUDGET_MB", cls.disk_budget_mb),
                   max_trainings_per_client=_env_int("SLM_MAX_TRAININGS_PER_CLIENT", cls.max_trainings_per_client),
                   max_queued_trainings=_env_int("SLM_MAX_QUEUED_TRAININGS", cls.max_queued_trainings),
                   train_slice_s=_env_int("SLM_TRAIN_SLICE", cls.train_slice_s),
                   allow_local_token=_env_flag("SLM_ALLOW_LOCAL_TOKEN"),
                   mode=mode_from_env(),
                   workspace_ttl_s=_env_int("SLM_WORKSPACE_TTL", cls.workspace_ttl_s))

    def caps(self) -> Caps:
        """The limits a training job is checked against (before it starts, and on the real vocabulary)."""
        return Caps(max_params=self.max_params, max_train_mb=self.max_train_mb, max_steps=self.max_steps,
                    max_time_s=self.max_time_s, max_context=self.max_context)

    @property
    def max_file_bytes(self) -> int:
        """Gradio's cap on one uploaded file: a data file, or the weights of a model at the parameter cap."""
        return max(self.max_upload_mb * 2**20, int(4.2 * self.max_params) + 2**20)

    @property
    def max_upload_request_bytes(self) -> int:
        """One upload request (several files of a folder): twice the largest file."""
        return 2 * self.max_file_bytes

    @property
    def use_ambient_token(self) -> bool:
        """Whether /push may use the server's own token (HF_TOKEN, `hf auth login`) when the user gave none:
        only with SLM_ALLOW_LOCAL_TOKEN=1 and never on Spaces (a Space is shared by definition)."""
        return self.allow_local_token and not os.environ.get("SPACE_ID")


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
    readonly: bool = False  # found in a folder given with --runs: read, exported, never trained or deleted here

    @property
    def status(self) -> str:
        """queued / running / requeue / done / stopped / error, or interrupted (the app stopped while it
        trained); a run no process of this app trained reads its state from its folder."""
        return self.job.status if self.job is not None else disk_status(self.dir)


@dataclass
class Session:
    id: str
    root: Path
    runs: dict[str, SessionRun] = field(default_factory=dict)
    imports: dict[str, Path] = field(default_factory=dict)  # name -> an imported model's folder (loaded: models.py)
    uploads: dict[str, str] = field(default_factory=dict)  # an upload's path as the page sends it -> our copy
    exports: dict[str, Path] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one training start at a time per session
    preview_cache: dict = field(default_factory=dict)  # (data, tokenizer) choice -> vocabulary and token counts
    followed: str = ""  # the run the Train tab follows (the last one started or resumed)
    last_seen: float = field(default_factory=time.time)  # the last request (the sweeper closes idle sessions)
    workspace: bool = False  # a workspace (kept when its tab closes) rather than a tab's session

    def seen(self) -> None:
        self.last_seen = time.time()
        if self.workspace:
            touch(self.root)

    def new_run_name(self, wanted: str) -> str:
        base = safe_name(wanted, "run")
        name, i = base, 2
        while name in self.runs or name in self.imports or (self.root / "runs" / name).exists() \
                or (self.root / "imports" / name).exists():  # an import's name must not take another's folder
            name, i = f"{base}-{i}", i + 1
        return name

    def disk_mb(self) -> float:
        from .sweeper import folder_mb

        return folder_mb(self.root)

    def model_names(self) -> list[str]:
        """What Generate can pick: the runs, then the imported models."""
        return list(self.runs) + [n for n in self.imports if n not in self.runs]

    def check_room(self, limits: "Limits", what: str) -> None:
        """ValueError (a message for the user) when one more run or import would pass the session's count or
        its disk quota."""
        count = len(self.runs) + len(self.imports)
        if count >= limits.max_runs_per_session:
            raise ValueError(f"{what}: {self.holder} has {count} runs and imported models, the most allowed here; "
                             f"{self.make_room}")
        self.check_quota(limits, what)

    @property
    def holder(self) -> str:
        return "your workspace" if self.workspace else "this session"

    @property
    def make_room(self) -> str:
        return ("export what you want to keep, then Delete my workspace (above the tabs) to start an empty one"
                if self.workspace else "start a new session (a new client) for more")

    def check_quota(self, limits: "Limits", what: str) -> None:
        """ValueError when the session's folder (runs, uploads, imports, exports) is over its disk quota."""
        used_mb = self.disk_mb()
        if used_mb > limits.session_quota_mb:
            raise ValueError(f"{what}: {self.holder} uses {used_mb:.0f} MB of disk, over the "
                             f"{limits.session_quota_mb} MB allowed; {self.make_room}")

    def run(self, name: str) -> SessionRun:
        if name not in self.runs:
            from ..training.schema import short

            raise ValueError(f"run {short(name)} is not one of this session's runs; pick one from the list")
        return self.runs[name]


class SessionStore:
    def __init__(self, limits: Limits | None = None):
        from .guard import Gate, Liveness
        from .models import ModelCache

        self.limits = limits or Limits.from_env()
        self.sessions: dict[str, Session] = {}  # by key: a tab's session, or a workspace (workspace.py)
        self.bindings: dict[str, str] = {}  # page session hash -> the workspace key its load event bound it to
        self.closing: set[str] = set()  # closed sessions whose files are still being removed
        self.lock = threading.Lock()
        lim = self.limits
        self.queue = TrainingQueue(lim.max_concurrent, max_waiting=lim.max_queued_trainings,
                                   per_client=lim.max_trainings_per_client, slice_s=lim.train_slice_s)
        self.liveness = Liveness()  # open heartbeats per session (guard.RequestGuard keeps it)
        self.gate = Gate()  # one generation / one inspect request at a time per session
        self.models = ModelCache(lim.model_cache_mb * 2**20)  # loaded models of every session, one budget
        self.sweeper = None
        self._disk = (0.0, -1e9)  # (MiB used by the data folder, when measured)

    @staticmethod
    def key(session_id: str | None) -> str:
        """The store's key (and folder name) for a Gradio session hash."""
        return safe_name(session_id or "local", "local")

    def resolve(self, session_id: str | None) -> str:
        """The key a request's session hash works in: the local workspace (local mode), the workspace its page
        bound to, or else its own session."""
        if self.limits.mode == "local":
            return LOCAL
        with self.lock:
            bound = self.bindings.get(session_id or "")
        return bound or self.key(session_id)

    def bind(self, session_id: str | None, key: str) -> Session:
        """Point a page's session hash at a workspace (its load event, workspace.py says whose), and open it."""
        if session_id:
            with self.lock:
                self.bindings[session_id] = key
        return self.open(key)

    def get(self, session_id: str | None) -> Session:
        return self.open(self.resolve(session_id))

    def open(self, key: str) -> Session:
        """The session or workspace of a key, read from its folder when this process has not opened it yet (a
        workspace lists the runs and imports it holds; runs of --runs folders are listed read-only)."""
        from .sweeper import OWNER_FILE

        with self.lock:
            if key not in self.sessions:
                if is_workspace(key):
                    root = workspace_folder(self.limits.data_dir, key)
                    root.mkdir(parents=True, exist_ok=True)
                    session = Session(key, root, workspace=True)
                    session.runs = {n: SessionRun(n, d) for n, d in scan_runs(root / "runs").items()}
                    session.imports = scan_imports(root)
                    if key == LOCAL:
                        for extra in self.limits.run_dirs:
                            for n, d in scan_runs(Path(extra)).items():
                                name = session.new_run_name(n)
                                session.runs[name] = SessionRun(name, d, readonly=True)
                else:
                    root = self.limits.data_dir / "sessions" / key
                    root.mkdir(parents=True, exist_ok=True)
                    (root / OWNER_FILE).write_text(str(os.getpid()))  # which app process owns it (sweeper.py)
                    session = Session(key, root)
                self.sessions[key] = session
            session = self.sessions[key]
        session.seen()
        return session

    def start_sweeper(self, interval_s: float = 30.0):
        """Start the sweeper (sweeper.py): at once (a crashed process's folders) and then every interval."""
        from .sweeper import Sweeper

        if self.sweeper is None:
            self.sweeper = Sweeper(self, interval_s)
        self.sweeper.start()
        return self.sweeper

    def disk_used_mb(self, max_age_s: float = 10.0) -> float:
        """MiB used by the data folder (sessions, MLflow store and artifacts) and Gradio's folder of uploads
        and downloads, measured at most max_age_s ago."""
        from .gradio_folder import upload_folder
        from .sweeper import folder_mb

        used, when = self._disk
        if time.time() - when > max_age_s:
            used = sum(folder_mb(p) for p in (self.limits.data_dir, upload_folder()) if p.exists())
            self._disk = (used, time.time())
        return used

    def check_disk(self, what: str) -> None:
        """DiskFull (a message for the user) when all users together are over the disk budget."""
        budget = self.limits.disk_budget_mb
        if budget and self.disk_used_mb() > budget:
            from .sweeper import DiskFull

            raise DiskFull(f"{what}: this app's disk budget ({budget:,} MB for all users) is used up; try again "
                            "later (closed and idle sessions are cleaned up every few minutes)")

    def close(self, session_id: str | None) -> None:
        """The tab was closed. A page bound to a workspace lets go of it (its trainings go on, its files stay);
        a tab's own session is closed: its trainings stopped, its models dropped, its files deleted."""
        with self.lock:
            bound = self.bindings.pop(session_id or "", None)
        if bound is not None or self.limits.mode == "local":
            return
        self.close_key(self.key(session_id))

    def unload(self, key: str) -> None:
        """Forget an idle workspace in memory (its models too); its folder stays and opens again on next use."""
        with self.lock:
            session = self.sessions.get(key)
            if session is None or any(r.job is not None and not r.job.finished for r in session.runs.values()):
                return
            del self.sessions[key]
        self.models.drop(key)

    def delete_workspace(self, key: str) -> None:
        """"Delete my workspace": stop its trainings, drop its models, delete its folder and MLflow artifacts."""
        with self.lock:
            for sid in [s for s, k in self.bindings.items() if k == key]:
                del self.bindings[sid]
        if key in self.sessions:
            self.close_key(key)
        else:
            from .sweeper import remove_session_files

            remove_session_files(workspace_folder(self.limits.data_dir, key), self.mlflow_uri)

    def close_key(self, sid: str) -> None:
        """Stop a session's (or workspace's) trainings, drop its models and delete its files."""
        with self.lock:
            session = self.sessions.pop(sid, None)
            if session is not None:
                self.closing.add(sid)
        if session is None:
            return
        for r in session.runs.values():
            if r.job and not r.job.finished:
                self.queue.cancel(r.job)
        self.models.drop(sid)
        threading.Thread(target=self._remove_later, args=(session,), daemon=True).start()

    def _remove_later(self, session: Session) -> None:
        for r in session.runs.values():  # give workers time to write their stop checkpoint and exit
            if r.job and r.job.proc:
                try:
                    r.job.proc.wait(timeout=60)
                except Exception:
                    r.job.kill()
        from .gradio_folder import served_folder
        from .sweeper import remove_session_files

        try:
            shutil.rmtree(served_folder(session.id), ignore_errors=True)  # its downloads in Gradio's folder
            remove_session_files(session.root, self.mlflow_uri)
        finally:
            with self.lock:
                self.closing.discard(session.id)
            self._disk = (self._disk[0], -1e9)  # measure again next time

    def hub_token(self, oauth_token) -> str | bool | None:
        """Whose credentials a visitor's Hub reads use (training/hub_access.py): their own sign-in token, else
        none (anonymous); the server's own login only when a local owner opted in (never on Spaces)."""
        visitor = getattr(oauth_token, "token", None)
        if isinstance(visitor, str) and visitor:
            return visitor
        return None if self.limits.use_ambient_token else False

    @property
    def mlflow_uri(self) -> str:
        from ..training.tracking import tracking_uri

        return tracking_uri(self.limits.data_dir)
