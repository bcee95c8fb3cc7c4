"""Training jobs for the app: each runs in a worker process (worker.py), behind a queue with a concurrency limit.

The queue is shared by all users of one app process (it holds no user data, only whose turn it is); each
job belongs to one session. A job's events arrive on a reader thread and are kept in `job.events`, so a
UI generator can follow them without blocking other users.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = ("done", "stopped", "error")


class TrainingJob:
    def __init__(self, spec: dict, run_dir: str | Path):
        self.id = uuid.uuid4().hex[:12]
        self.spec = spec  # the worker's job description (see worker.py)
        self.run_dir = Path(run_dir)
        self.events: list[dict] = []
        self.status = "queued"  # queued | running | done | stopped | error
        self.message = ""
        self.proc: subprocess.Popen | None = None
        self.changed = threading.Condition()
        self.stop_requested = False

    # --- lifecycle -----------------------------------------------------------------
    def _start(self, on_exit) -> None:
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        job_file = self.run_dir.parent / f".job-{self.id}.json"
        job_file.write_text(json.dumps({**self.spec, "run_dir": str(self.run_dir)}))
        log = open(self.run_dir.parent / f".job-{self.id}.log", "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, "-m", "slm_blocks.training.worker", str(job_file)], cwd=str(ROOT),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self._set("running")
        threading.Thread(target=self._read, args=(on_exit, log, job_file), daemon=True).start()
        if self.stop_requested:
            self.stop()

    def _read(self, on_exit, log, job_file: Path) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.changed:
                self.events.append(event)
                kind = event.get("event")
                if kind == "DoneEvent":
                    reason = event.get("reason")
                    self.status = "error" if reason == "error" else ("stopped" if reason == "stopped" else "done")
                    self.message = event.get("message", "")
                elif kind == "error":
                    self.status, self.message = "error", event.get("message", "")
                self.changed.notify_all()
        rc = self.proc.wait()
        log.close()
        job_file.unlink(missing_ok=True)
        if self.status == "running":  # no final event: the worker died (killed, out of memory)
            self._set("error", f"the training worker exited unexpectedly (code {rc}); the last checkpoint is kept "
                      "and you can resume")
        else:
            self._set(self.status, self.message)
        on_exit(self)

    def _set(self, status: str, message: str | None = None) -> None:
        with self.changed:
            self.status = status
            if message is not None:
                self.message = message
            self.changed.notify_all()

    def stop(self) -> None:
        """Cooperative stop: the worker finishes its step and writes a resumable checkpoint."""
        self.stop_requested = True
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()

    def wait_for_change(self, seen: int, timeout: float = 1.0) -> None:
        """Block until there are more than `seen` events or the status is terminal (or timeout)."""
        with self.changed:
            if len(self.events) <= seen and self.status not in TERMINAL:
                self.changed.wait(timeout)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class TrainingQueue:
    """At most `max_running` workers at once; the rest wait in order and can see their place in line."""

    def __init__(self, max_running: int = 1):
        self.max_running = max(1, max_running)
        self.waiting: deque[TrainingJob] = deque()
        self.running: set[TrainingJob] = set()
        self.lock = threading.Lock()

    def submit(self, job: TrainingJob) -> TrainingJob:
        with self.lock:
            self.waiting.append(job)
        self._dispatch()
        return job

    def position(self, job: TrainingJob) -> int:
        """1-based place in line, 0 when running or finished."""
        with self.lock:
            return list(self.waiting).index(job) + 1 if job in self.waiting else 0

    def cancel(self, job: TrainingJob) -> None:
        with self.lock:
            if job in self.waiting:
                self.waiting.remove(job)
                job._set("stopped", "removed from the queue before it started")
                return
        job.stop()

    def _dispatch(self) -> None:
        with self.lock:
            starting = []
            while self.waiting and len(self.running) < self.max_running:
                job = self.waiting.popleft()
                self.running.add(job)
                starting.append(job)
        for job in starting:
            try:
                job._start(self._finished)
            except OSError as e:
                job._set("error", f"could not start a training worker: {e}")
                self._finished(job)

    def _finished(self, job: TrainingJob) -> None:
        with self.lock:
            self.running.discard(job)
        self._dispatch()

    def wait_idle(self, timeout: float = 60) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            with self.lock:
                if not self.running and not self.waiting:
                    return True
            time.sleep(0.1)
        return False
