"""Trainings queued by the app: each runs in a worker process (worker.py), behind a queue with a concurrency limit.

The queue is shared by all users of one app process (it holds no user data, only whose turn it is); each
entry belongs to one session. An entry's events arrive on a reader thread, decoded into typed events
(events.py), and are kept in `entry.events`, so a UI generator can follow them without blocking other users.

Fair share: the queue holds at most `max_waiting` trainings, at most `per_client` of them (waiting or running)
from one client address, and while someone waits, a training that has run `slice_s` seconds since it last
started is stopped at its next step with a checkpoint and put back at the end of the line; when its turn
comes again it continues from that checkpoint (same run, same entry: whoever follows it sees "waiting" and
then the steps going on). Its time budget counts training time only, so waiting costs it nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from .events import DoneEvent, ErrorEvent, Event, StatusEvent, StepEvent, decode
from .hub_access import worker_env
from .job import Caps, Job

ROOT = Path(__file__).resolve().parents[2]
# the worker modules a training may run in: the plain one, and the growth layer's (the same worker, which can also
# prepare runs that start from weights or learn from a teacher; see training/driver.py, growth_hook)
WORKERS = ("slm_blocks.training.worker", "slm_blocks.grow.worker")
TERMINAL = ("done", "stopped", "error")


class QueueFull(ValueError):
    """The queue cannot take this training now (too many waiting, or too many from this client)."""


class QueuedTraining:
    """One training in the queue: a new run (`job`) or a resume of `run_dir` (job None, `resume=True`)."""

    def __init__(self, job: Job | None, run_dir: str | Path, *, resume: bool = False, extra_steps: int = 0,
                 train_overrides: dict | None = None, caps: Caps | None = None, mlflow_uri: str | None = None,
                 track: bool = True, max_steps: int | None = None, max_time: float | None = None,
                 worker: str = WORKERS[0]):
        if worker not in WORKERS:
            raise ValueError(f"worker must be one of {WORKERS}")  # a caller's bug: never a user's value
        self.worker = worker
        self.id = uuid.uuid4().hex[:12]
        self.job, self.resume, self.extra_steps, self.caps = job, resume, extra_steps, caps
        self.train_overrides = train_overrides
        self.mlflow_uri, self.track = mlflow_uri, track
        self.run_dir = Path(run_dir)
        # the limits it trains to, for progress and the queue's wait estimate (a resume learns them when ready)
        self.max_steps = max_steps or (job.train.max_steps if job else 0)
        self.max_time = max_time if max_time is not None else (job.train.max_time if job else None)
        self.events: list[Event] = []
        self.carried = 0  # events copied from the run's earlier trainings (a resume continues their curves)
        self.status = "queued"  # queued | running | done | stopped | error
        self.message = ""
        self.proc: subprocess.Popen | None = None
        self.changed = threading.Condition()
        self.stop_requested = False
        self.started_at: float | None = None
        self.client: str | None = None  # the address that asked for it (per-client queue limit)
        self.preempting = False  # stopped by the queue for others: goes back in line, not to "stopped"
        self.hub_token = False  # the worker's Hub reads: anonymous, a visitor's token, or None (hub_access.py)
        self.turns = 0  # how many times a worker has started for it

    def work(self) -> dict:
        """What the worker reads (see worker.py)."""
        return {"job": self.job.to_dict() if self.job else None, "run_dir": str(self.run_dir), "resume": self.resume,
                "extra_steps": self.extra_steps, "train_overrides": self.train_overrides,
                "caps": self.caps.to_dict() if self.caps else None, "mlflow": self.track, "mlflow_uri": self.mlflow_uri}

    # --- lifecycle -----------------------------------------------------------------
    def _start(self, on_exit) -> None:
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        work_file = self.run_dir.parent / f".job-{self.id}.json"
        work_file.write_text(json.dumps(self.work()))
        log = open(self.run_dir.parent / f".job-{self.id}.log", "w")
        # an empty working directory: a Hub id like 'owner/name' can never resolve to a folder on the server
        cwd = tempfile.mkdtemp(prefix=f".cwd-{self.id}-", dir=self.run_dir.parent)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
               "SLM_MLFLOW_CHECKPOINTS": "0",  # the run folder holds the checkpoints: MLflow gets metrics only
               "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        env = worker_env(env, self.hub_token)  # never the server's own Hub token for a visitor's job
        self.proc = subprocess.Popen([sys.executable, "-m", self.worker, str(work_file)], cwd=cwd,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self.started_at = time.time()
        self.turns += 1
        self._set("running")
        threading.Thread(target=self._read, args=(on_exit, log, work_file, cwd), daemon=True).start()
        if self.stop_requested:
            self.stop()

    def _read(self, on_exit, log, work_file: Path, cwd: str) -> None:
        from .events import ReadyEvent

        for line in self.proc.stdout:
            try:
                event = decode(json.loads(line))
            except ValueError:
                continue  # not an event (a library printing to stdout)
            with self.changed:
                if isinstance(event, DoneEvent) and event.reason == "stopped" and self.preempting \
                        and not self.stop_requested:
                    minutes = (time.time() - (self.started_at or time.time())) / 60
                    event = StatusEvent(f"paused after {minutes:.0f} min of training because others are waiting "
                                        "for a trainer; back in line, it continues from this step when its turn "
                                        "comes")
                    self.status = "requeue"
                self.events.append(event)
                if isinstance(event, ReadyEvent):
                    self.max_steps, self.max_time = event.max_steps, event.max_time
                elif isinstance(event, DoneEvent):
                    self.status = {"error": "error", "stopped": "stopped"}.get(event.reason, "done")
                    self.message = event.message
                elif isinstance(event, ErrorEvent):
                    self.status, self.message = "error", event.message
                self.changed.notify_all()
        rc = self.proc.wait()
        log.close()
        work_file.unlink(missing_ok=True)
        try:
            os.rmdir(cwd)
        except OSError:
            pass
        if self.status == "requeue" and self.stop_requested:  # the user pressed Stop while it was being paused
            self.preempting = False
            self._set("stopped", "stopped by the user; resume continues from here")
        elif self.status == "requeue":  # preempted (see the module docstring): continue from the checkpoint later
            self.resume, self.extra_steps, self.preempting = True, 0, False
            self.carried = len(self.events)
            self._set("queued")
        elif self.status == "running":  # no final event: the worker died (killed, out of memory)
            message = (f"the training worker exited unexpectedly (code {rc}); the last checkpoint is kept and you "
                       "can resume")
            self._mark_failed_in_mlflow(message)
            self._set("error", message)
        else:
            self._set(self.status, self.message)
        on_exit(self)

    def _mark_failed_in_mlflow(self, message: str) -> None:
        """A killed worker could not end its MLflow run: end it here, so it never stays RUNNING."""
        try:
            run_id = json.loads((self.run_dir / "run.json").read_text()).get("mlflow_run_id")
        except (OSError, ValueError):
            return
        if run_id and self.track:
            from .tracking import mark_failed, tracking_uri

            mark_failed(self.mlflow_uri or tracking_uri(self.run_dir.parent), run_id, message)

    def _set(self, status: str, message: str | None = None) -> None:
        with self.changed:
            self.status = status
            if message is not None:
                self.message = message
            self.changed.notify_all()
        self._record_state()

    def _record_state(self) -> None:
        """How the run's training ended, in its folder (the worker writes it too; this covers a worker that
        died, or a training stopped before its worker started)."""
        from .run import record_end

        if self.status in TERMINAL:
            record_end(self.run_dir, self.status, self.message)

    def stop(self) -> None:
        """Cooperative stop: the worker finishes its step and writes a resumable checkpoint."""
        self.stop_requested = True
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    def preempt(self) -> None:
        """Stop at the next step with a checkpoint, to go back in line (see the module docstring)."""
        if self.proc and self.proc.poll() is None and not self.stop_requested:
            self.preempting = True
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    def has_trained(self) -> bool:
        """Whether this turn has taken a step (so a stop writes a checkpoint to continue from)."""
        return any(isinstance(e, StepEvent) for e in self.events[self.carried:])

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

    def expected_seconds(self) -> tuple[float | None, bool]:
        """(seconds this training will still take, whether that is only its time budget, an upper bound):
        from its speed so far when it has one. None when it has neither speed nor budget."""
        if self.finished:
            return 0.0, False
        steps = [e for e in self.events[self.carried:] if isinstance(e, StepEvent)]  # this training's own speed
        if steps:
            return steps[-1].eta_s, False
        return self.max_time, True


class TrainingQueue:
    """At most `max_running` workers at once; the rest wait in order and can see their place in line.
    `max_waiting`, `per_client` and `slice_s` (None or 0: no limit) are the fair-share rules of the module
    docstring."""

    def __init__(self, max_running: int = 1, *, max_waiting: int | None = None, per_client: int | None = None,
                 slice_s: float | None = None, tick_s: float = 1.0):
        self.max_running = max(1, max_running)
        self.max_waiting, self.per_client, self.slice_s, self.tick_s = max_waiting, per_client, slice_s, tick_s
        self.waiting: deque[QueuedTraining] = deque()
        self.running: set[QueuedTraining] = set()
        self.lock = threading.Lock()
        self._monitor: threading.Thread | None = None

    def submit(self, entry: QueuedTraining) -> QueuedTraining:
        """Queue `entry`; QueueFull (a message for the user) when the queue or this client's share is full."""
        with self.lock:
            if self.max_waiting and len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} trainings are already waiting for a trainer, the most this "
                                "app queues; try again in a few minutes")
            if self.per_client and entry.client is not None:
                mine = sum(1 for e in [*self.waiting, *self.running] if e.client == entry.client)
                if mine >= self.per_client:
                    raise QueueFull(f"{mine} trainings from your address are already waiting or running, the most "
                                    "this app allows; wait until one ends")
            self.waiting.append(entry)
        self._dispatch()
        self._watch()
        return entry

    def _watch(self) -> None:
        """Start the fair-share monitor (one daemon thread while there is work)."""
        if not self.slice_s:
            return
        with self.lock:
            if self._monitor is not None and self._monitor.is_alive():
                return
            self._monitor = threading.Thread(target=self._monitor_loop, daemon=True, name="slm-queue-monitor")
            self._monitor.start()

    def _monitor_loop(self) -> None:
        while True:
            time.sleep(self.tick_s)
            with self.lock:
                if not self.running and not self.waiting:
                    self._monitor = None
                    return
            self.rebalance()

    def rebalance(self, now: float | None = None) -> list[QueuedTraining]:
        """While trainings wait, preempt the ones that used up their slice (longest-running first, at most one
        per waiting training); returns them."""
        if not self.slice_s:
            return []
        now = time.time() if now is None else now
        with self.lock:
            if not self.waiting:
                return []
            due = sorted((e for e in self.running if not e.preempting and e.status == "running" and e.started_at
                          and now - e.started_at >= self.slice_s and e.has_trained()), key=lambda e: e.started_at)
            due = due[:len(self.waiting)]
        for entry in due:
            entry.preempt()
        return due

    def position(self, entry: QueuedTraining) -> int:
        """1-based place in line, 0 when running or finished."""
        with self.lock:
            return list(self.waiting).index(entry) + 1 if entry in self.waiting else 0

    def estimated_wait(self, entry: QueuedTraining) -> tuple[float | None, bool]:
        """(seconds until `entry` can start, whether that is an upper bound from time budgets). None when a
        training ahead has neither a speed yet nor a time budget."""
        with self.lock:
            if entry not in self.waiting:
                return 0.0, False
            waiting = list(self.waiting)
            ahead, running = waiting[:waiting.index(entry)], list(self.running)
        slots, bound = [], False
        for e in running + ahead:
            need, is_bound = e.expected_seconds()
            if need is None:
                return None, False
            bound = bound or is_bound
            if e in running:
                slots.append(need)
            else:  # a waiting one takes the slot that frees first
                slots += [0.0] * (self.max_running - len(slots))
                slots.sort()
                slots[0] += need
        slots += [0.0] * (self.max_running - len(slots))
        return min(slots), bound

    def cancel(self, entry: QueuedTraining) -> None:
        with self.lock:
            if entry in self.waiting:
                self.waiting.remove(entry)
                entry._set("stopped", "stopped while waiting for its next turn; resume continues from the last "
                           "checkpoint" if entry.turns else "removed from the queue before it started")
                return
        entry.stop()

    def _dispatch(self) -> None:
        with self.lock:
            starting = []
            while self.waiting and len(self.running) < self.max_running:
                entry = self.waiting.popleft()
                self.running.add(entry)
                starting.append(entry)
        for entry in starting:
            try:
                entry._start(self._finished)
            except OSError as e:
                entry._set("error", f"could not start a training worker: {e}")
                self._finished(entry)

    def _finished(self, entry: QueuedTraining) -> None:
        with self.lock:
            self.running.discard(entry)
            if entry.status == "queued":  # preempted: back at the end of the line
                self.waiting.append(entry)
        self._dispatch()

    def wait_idle(self, timeout: float = 60) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            with self.lock:
                if not self.running and not self.waiting:
                    return True
            time.sleep(0.1)
        return False
