"""Disk hygiene of a shared app: what no live session owns is removed, and the whole data folder has a budget.

A browser tab closes its session through `demo.unload`, but a REST client (or a tab whose browser crashed
before the heartbeat noticed) never does, and a crashed app process leaves every session folder behind.
The sweeper runs once at start-up and then every `interval_s` seconds:

- a session with no request for `SLM_SESSION_IDLE` seconds, no training queued or running and no open
  heartbeat (an open tab or gradio_client keeps one open) is closed like an unloaded one: its trainings
  stopped, its models dropped, its folder and its runs' MLflow artifacts deleted (their metrics stay for
  Compare); an idle workspace (workspace.py) is only let go from memory, its folder stays;
- an anonymous workspace unused for `SLM_WORKSPACE_TTL` seconds (shared mode) is deleted like a session;
- a folder under `<data dir>/sessions` that no live session owns (left by a crashed process: its `.owner`
  pid is not running, or it has none) is deleted with its runs' MLflow artifacts, and so is a folder of
  downloads in Gradio's folder (uploads.served_folder) that no live session owns;
- the empty temporary files Gradio's file widget leaves in its folder at every event that reads it are
  deleted after ten minutes;
- the data folder's and Gradio's folder's size is measured; above `SLM_DISK_BUDGET_MB` new trainings, uploads,
  imports and exports are refused with a message (SessionStore.check_disk) until enough is freed.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

log = logging.getLogger("slm_blocks.app")
OWNER_FILE = ".owner"  # in a session folder: the pid of the app process that created it (state.py writes it)


class DiskFull(ValueError):
    """New work refused: the data folder is over SLM_DISK_BUDGET_MB (the message says so and what to do)."""


def folder_mb(path: Path) -> float:
    """Size of the files under `path` in MiB. Files and folders vanishing while it walks (a closed session
    being deleted by another thread) are skipped: os.walk ignores a folder it can no longer list, where
    Path.rglob raises FileNotFoundError."""
    import os
    import stat

    total = 0
    for folder, _dirs, files in os.walk(path):  # does not follow symlinked folders
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))  # a symlink counts as itself, not its target
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total / 2**20


def mlflow_run_ids(session_root: Path) -> list[str]:
    """The MLflow run ids of the runs in a session folder (from each run.json)."""
    ids = []
    for record in Path(session_root).glob("runs/*/run.json"):
        try:
            run_id = json.loads(record.read_text()).get("mlflow_run_id")
        except (OSError, ValueError):
            continue
        if isinstance(run_id, str) and run_id:
            ids.append(run_id)
    return ids


def remove_session_files(root: Path, mlflow_uri: str | None) -> None:
    """Delete a session folder and the MLflow artifacts of its runs."""
    if mlflow_uri:
        try:
            from ..training.tracking import delete_artifacts

            delete_artifacts(mlflow_uri, mlflow_run_ids(root))
        except Exception:  # tracking must never keep a folder from being removed
            log.warning("could not delete the MLflow artifacts of a closed session", exc_info=True)
    shutil.rmtree(root, ignore_errors=True)


def owned_by_another_live_process(folder: Path) -> bool:
    """Whether another app process that is still running created this session folder (two apps started on
    one data folder must not sweep each other's sessions)."""
    import os

    try:
        pid = int((folder / OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return False  # no owner recorded: left by a crashed process (or an older version)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


class Sweeper:
    """See the module docstring. One per SessionStore; `sweep()` can also be called directly (tests)."""

    def __init__(self, store, interval_s: float = 30.0):
        self.store, self.interval_s = store, interval_s
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, daemon=True, name="slm-sweeper")
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # never let the sweeper die: the next pass tries again
                log.exception("sweeper pass failed")
            self._stop.wait(self.interval_s)

    def sweep(self, now: float | None = None) -> dict:
        """One pass; returns what it did: {"closed": [...], "orphans": [...], "expired": [...], "disk_mb": ...}."""
        from .workspace import is_workspace

        now = time.time() if now is None else now
        self.release_gone_pages(now)
        closed = [sid for sid in self.idle_sessions(now)]
        for sid in closed:
            if is_workspace(sid):
                self.store.unload(sid)  # kept on disk: it opens again when its learner comes back
            else:
                self.store.close_key(sid)
        orphans = self.remove_orphans()
        expired = self.expire_workspaces(now)
        return {"closed": closed, "orphans": orphans, "expired": expired,
                "disk_mb": self.store.disk_used_mb(max_age_s=0)}

    def idle_sessions(self, now: float) -> list[str]:
        store, idle = self.store, self.store.limits.session_idle_s
        if idle <= 0:
            return []
        with store.lock:
            sessions = list(store.sessions.values())
            bound = set(store.bindings.values())
        return [s.id for s in sessions if now - s.last_seen > idle and not store.liveness.is_open(s.id)
                and s.id not in bound
                and not any(r.job is not None and not r.job.finished for r in s.runs.values())]

    def release_gone_pages(self, now: float) -> None:
        """A page whose tab went away without its unload (a crashed browser) lets go of its workspace once the
        workspace is idle, so the workspace can be let go from memory and, when anonymous, expire."""
        store, idle = self.store, self.store.limits.session_idle_s
        if idle <= 0:
            return
        with store.lock:
            for page, key in list(store.bindings.items()):
                session = store.sessions.get(key)
                if not store.liveness.is_open(store.key(page)) and (session is None or now - session.last_seen > idle):
                    del store.bindings[page]

    def expire_workspaces(self, now: float) -> list[str]:
        """Anonymous workspaces unused for SLM_WORKSPACE_TTL (shared mode) are deleted with their files;
        signed-in and local ones are kept until their owner deletes them."""
        from .workspace import PREFIX, last_seen

        store, ttl = self.store, self.store.limits.workspace_ttl_s
        parent = store.limits.data_dir / "workspaces"
        if store.limits.mode != "shared" or ttl <= 0 or not parent.is_dir():
            return []
        expired = []
        for folder in parent.glob("anon-*"):
            key = PREFIX + folder.name
            with store.lock:
                session = store.sessions.get(key)
                bound = key in store.bindings.values()
            seen = max(last_seen(folder), session.last_seen if session else 0.0)
            if bound or now - seen <= ttl or (session and any(r.job is not None and not r.job.finished
                                                              for r in session.runs.values())):
                continue
            store.delete_workspace(key)
            expired.append(folder.name)
        return expired

    def remove_orphans(self) -> list[str]:
        store = self.store
        parent = store.limits.data_dir / "sessions"
        removed = []
        for folder in parent.iterdir() if parent.is_dir() else []:
            with store.lock:
                owned = folder.name in store.sessions or folder.name in store.closing
            if owned or not folder.is_dir() or owned_by_another_live_process(folder):
                continue
            remove_session_files(folder, store.mlflow_uri)
            removed.append(folder.name)
        self._tidy_gradio_folder()
        return removed

    def _tidy_gradio_folder(self, empty_after_s: float = 600.0) -> None:
        """Downloads of sessions that are gone, and Gradio's empty temporary files (see the module docstring)."""
        from .gradio_folder import SERVED, upload_folder

        store, root = self.store, upload_folder()
        for folder in (root / SERVED).iterdir() if (root / SERVED).is_dir() else []:
            with store.lock:
                live = folder.name in store.sessions or folder.name in store.closing
            if not live and not (store.limits.data_dir / "sessions" / folder.name).exists():
                shutil.rmtree(folder, ignore_errors=True)
        now = time.time()
        for f in root.glob("tmp*") if root.is_dir() else []:
            try:
                st = f.lstat()
                if f.is_file() and st.st_size == 0 and now - st.st_mtime > empty_after_s:
                    f.unlink()
            except OSError:
                continue
