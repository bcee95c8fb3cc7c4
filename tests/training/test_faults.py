"""Faults a long-running app meets: a worker killed mid-training, a stop in the middle of a step, running out of
memory, exploding gradients, and a user closing the tab while a training runs and a model is loaded.

Every training here is tiny (preset tiny-char or smaller, builtin stories capped at 100k characters, batch 2,
one torch thread per worker) and runs in the real `python -m slm_blocks.training.worker` subprocess unless the test
needs to patch the training code, in which case the worker's `main` runs in-process.
"""

from __future__ import annotations

import gc
import io
import json
import math
import os
import signal
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import app_job, running_app, small_spec
from slm_blocks import load_preset
from slm_blocks.training.checkpoint import STEP_DIR, checkpoint_dirs, latest_checkpoint
from slm_blocks.training.events import (
    CheckpointEvent, DoneEvent, ErrorEvent, StepEvent, WarningEvent, decode,
)
from slm_blocks.training.job import Job
from slm_blocks.training.jobs import QueuedTraining

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOKENIZER = {"kind": "char", "vocab_size": None, "name_or_path": None}
DATA = {"source": "builtin", "name": "stories", "max_chars": 100_000}


@pytest.fixture(autouse=True)
def _one_thread_workers(monkeypatch):
    """Workers inherit the environment: one torch thread each (the cores are shared)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def job_spec(max_steps=20, spec=None, **train) -> dict:
    """A worker's work description for a new run (see worker.py)."""
    cfg = dict(max_steps=max_steps, batch_size=2, lr=1e-3, warmup_steps=2, log_every=1, eval_every=0,
               eval_batches=1, sample_tokens=0, checkpoint_every=5, device="cpu", precision="fp32", seed=7,
               max_time=120)
    cfg.update(train)
    job = Job.from_dict({"spec": (spec or load_preset("tiny-char")).to_dict(), "data": dict(DATA),
                         "tokenizer": dict(TOKENIZER), "train": cfg})
    return {"job": job, "mlflow": False}


def resume_spec(max_steps: int) -> dict:
    return {"job": None, "resume": True, "train_overrides": {"max_steps": max_steps}, "mlflow": False}


def entry(work: dict, run_dir: Path) -> QueuedTraining:
    return QueuedTraining(work["job"], run_dir, resume=work.get("resume", False),
                          train_overrides=work.get("train_overrides"), track=work["mlflow"])


class Runner:
    """Runs QueuedTrainings directly (no queue) and makes sure none outlives the test."""

    def __init__(self):
        self.jobs: list[QueuedTraining] = []

    def start(self, spec: dict, run_dir: Path) -> QueuedTraining:
        job = entry(spec, run_dir)
        job.exited = threading.Event()
        job._start(lambda j: j.exited.set())
        self.jobs.append(job)
        return job

    def close(self):
        for job in self.jobs:
            job.kill()


@pytest.fixture
def runner():
    r = Runner()
    yield r
    r.close()


def wait_until(job: QueuedTraining, pred, timeout=60.0, what="an event"):
    """Follow job.events until pred(events) holds (returns the events) or the job ends without it."""
    end = time.time() + timeout
    while time.time() < end:
        events = list(job.events)
        if pred(events):
            return events
        if job.finished:
            break
        job.wait_for_change(len(events), timeout=0.5)
    events = list(job.events)
    assert pred(events), (f"no {what} within {timeout} s: status {job.status!r} {job.message!r}, "
                          f"events {[type(e).__name__ for e in events][-10:]}")
    return events


def finish(job: QueuedTraining, timeout=90.0) -> list[dict]:
    end = time.time() + timeout
    while not job.finished or not job.exited.is_set():
        assert time.time() < end, f"the job did not end within {timeout} s ({job.status}, {job.events[-3:]})"
        job.wait_for_change(len(job.events), timeout=0.5)
        job.exited.wait(0.05)
    return list(job.events)


def kinds(events, kind):
    return [e for e in events if isinstance(e, kind)]


def step_of_dir(path: Path) -> int:
    return int(STEP_DIR.match(path.name).group(1))


def assert_checkpoints_complete(run_dir: Path) -> list[int]:
    """Every step-* folder is a whole checkpoint that loads; returns their steps. Half-written .tmp-* folders
    may exist after a kill, but latest_checkpoint / checkpoint_dirs never name them."""
    root = run_dir / "checkpoints"
    steps = []
    for d in sorted(p for p in root.iterdir() if STEP_DIR.match(p.name)):
        weights = load_file(d / "model.safetensors")
        assert weights and all(torch.isfinite(t).all() for t in weights.values()), d
        load_file(d / "optimizer.safetensors")
        load_file(d / "state.safetensors")
        json.loads((d / "optimizer.json").read_text())
        state = json.loads((d / "trainer_state.json").read_text())
        assert state["step"] == step_of_dir(d), (d, state["step"])
        steps.append(state["step"])
    listed = checkpoint_dirs(run_dir)
    assert [p.name for p in listed] == [f"step-{s:06d}" for s in steps]
    assert not any(p.name.startswith(".tmp") for p in listed)
    return steps


# ----------------------------------------------------------------------------- 1. SIGKILL mid-training


def test_worker_killed_mid_training_keeps_checkpoints_and_resumes(tmp_path, runner):
    run_dir = tmp_path / "runs" / "killed"
    job = runner.start(job_spec(max_steps=100_000, checkpoint_every=5), run_dir)
    events = wait_until(job, lambda ev: len(kinds(ev, CheckpointEvent)) >= 2, what="two checkpoints")
    assert job.status == "running"
    pid = job.proc.pid
    os.kill(pid, signal.SIGKILL)
    assert job.exited.wait(30), "the reader thread did not notice the dead worker"
    assert job.status == "error", (job.status, job.message)
    msg = job.message.lower()
    assert "exited" in msg and "checkpoint" in msg and "kept" in msg and "resume" in msg, job.message
    assert "traceback" not in msg
    assert job.proc.returncode == -signal.SIGKILL
    assert not list(run_dir.parent.glob(f".job-{job.id}.json")), "the job file must be removed"
    last_step_seen = max(e.step for e in kinds(job.events, StepEvent))
    assert last_step_seen < 100_000

    # a kill can land in the middle of a checkpoint write: simulate the half-written folder it leaves
    half = run_dir / "checkpoints" / ".tmp-step-999999-12345"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)
    steps = assert_checkpoints_complete(run_dir)
    assert steps, "no checkpoint survived the kill"
    ckpt = latest_checkpoint(run_dir)
    assert ckpt.name == f"step-{steps[-1]:06d}"
    resume_from = steps[-1]
    assert resume_from % 5 == 0 and resume_from <= last_step_seen
    assert len(steps) <= 4  # keep_checkpoints 3, +1 when the kill landed between the rename and the pruning

    # a new job resumes from that step and finishes
    resumed = runner.start(resume_spec(resume_from + 10), run_dir)
    events = finish(resumed)
    assert resumed.status == "done", (resumed.status, resumed.message, events[-3:])
    step_events = kinds(events, StepEvent)
    assert step_events[0].step == resume_from + 1, step_events[:2]
    assert step_events[-1].step == resume_from + 10
    assert kinds(events, DoneEvent)[-1].step == resume_from + 10
    assert all(math.isfinite(e.loss) for e in step_events)
    assert resume_from + 10 in assert_checkpoints_complete(run_dir)
    assert resumed.proc.returncode == 0


# ----------------------------------------------------------------------------- 2. stop in the middle of a step


@pytest.mark.parametrize("how", ["stdin", "sigterm"])
def test_stop_right_after_the_first_step_is_resumable(tmp_path, runner, how):
    run_dir = tmp_path / "runs" / f"stop-{how}"
    job = runner.start(job_spec(max_steps=100_000, checkpoint_every=0), run_dir)
    wait_until(job, lambda ev: kinds(ev, StepEvent), what="the first step")
    if how == "stdin":
        job.stop()  # what the Stop button does
    else:
        os.kill(job.proc.pid, signal.SIGTERM)  # what a container shutdown does
    events = finish(job, 60)
    assert job.status == "stopped", (job.status, job.message, events[-3:])
    assert job.proc.returncode == 0
    done = kinds(events, DoneEvent)[-1]
    stop_step = done.step
    assert done.reason == "stopped" and done.checkpoint
    assert 1 <= stop_step == max(e.step for e in kinds(events, StepEvent))
    assert latest_checkpoint(run_dir).name == f"step-{stop_step:06d}"
    assert Path(done.checkpoint) == latest_checkpoint(run_dir)
    assert assert_checkpoints_complete(run_dir) == [stop_step]

    resumed = runner.start(resume_spec(stop_step + 5), run_dir)
    events = finish(resumed)
    assert resumed.status == "done", (resumed.status, resumed.message)
    steps = [e.step for e in kinds(events, StepEvent)]
    assert steps == list(range(stop_step + 1, stop_step + 6)), steps


# ----------------------------------------------------------------------------- 3. out of memory


@pytest.fixture
def in_process_worker(monkeypatch, capsys):
    """Run slm_blocks.training.worker.main in this process: stdin is a pipe that stays open (no stop), SIGTERM's
    handler is restored afterwards, and the emitted events are parsed from stdout."""
    from slm_blocks.training import worker

    r, w = os.pipe()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.FileIO(r, "r")))
    old_term = signal.getsignal(signal.SIGTERM)

    def run(spec: dict, run_dir: Path) -> tuple[int, list[dict], str]:
        job_file = run_dir.parent / "job.json"
        job_file.parent.mkdir(parents=True, exist_ok=True)
        work = {**spec, "job": spec["job"].to_dict() if spec.get("job") else None, "run_dir": str(run_dir)}
        job_file.write_text(json.dumps(work))
        capsys.readouterr()
        rc = worker.main(str(job_file))
        out, err = capsys.readouterr()
        events = [decode(json.loads(line)) for line in out.splitlines() if line.startswith("{")]
        return rc, events, err

    yield run
    signal.signal(signal.SIGTERM, old_term)
    os.close(w)  # EOF: the stdin watcher thread ends


@pytest.mark.parametrize("error", ["MemoryError", "torch.OutOfMemoryError"])
def test_out_of_memory_is_reported_without_a_traceback(tmp_path, monkeypatch, in_process_worker, error):
    import slm_blocks.training.loop as training

    calls = {"n": 0}
    real_loss = training.lm_loss

    def exploding_loss(model, x, y, *parts):
        calls["n"] += 1
        if calls["n"] > 3:  # a few good steps, then the allocator gives up
            if error == "MemoryError":
                raise MemoryError()
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.11 GiB total)")
        return real_loss(model, x, y, *parts)

    monkeypatch.setattr(training, "lm_loss", exploding_loss)
    rc, events, err = in_process_worker(job_spec(max_steps=50, spec=small_spec(), checkpoint_every=2),
                                        tmp_path / "runs" / "oom")
    assert rc != 0
    assert calls["n"] > 3
    errors = kinds(events, ErrorEvent)
    assert len(errors) == 1 and isinstance(events[-1], ErrorEvent), [type(e).__name__ for e in events]
    msg = errors[0].message
    assert "memory" in msg.lower(), msg
    assert "Traceback" not in msg and 'File "' not in msg and "\n" not in msg, msg
    # the advice a user can act on, whatever kind of out-of-memory it was
    assert "smaller" in msg, msg
    # the steps before the failure were checkpointed and stay loadable
    assert assert_checkpoints_complete(tmp_path / "runs" / "oom") == [2]


# ----------------------------------------------------------------------------- 4. exploding gradients


def test_max_learning_rate_with_tiny_clip_never_crashes(tmp_path, runner):
    """lr = 1.0 (the UI's maximum) and a tiny clip: the run either stays finite or the non-finite guard stops
    it with warnings and an error DoneEvent; whatever happens, the checkpoints on disk are finite and whole."""
    run_dir = tmp_path / "runs" / "hot"
    job = runner.start(job_spec(max_steps=40, lr=1.0, grad_clip=0.01, warmup_steps=0, checkpoint_every=5), run_dir)
    events = finish(job)
    assert job.proc.returncode == 0, job.proc.returncode  # the worker did not crash
    assert not kinds(events, ErrorEvent), kinds(events, ErrorEvent)
    done = kinds(events, DoneEvent)
    assert len(done) == 1, [type(e).__name__ for e in events]
    assert all(math.isfinite(e.loss) and math.isfinite(e.grad_norm) for e in kinds(events, StepEvent))
    if done[0].reason == "error":
        assert job.status == "error" and kinds(events, WarningEvent)
        assert "non-finite" in job.message and "checkpoint" in job.message
    else:
        assert job.status == "done" and done[0].reason == "max_steps", done
    assert assert_checkpoints_complete(run_dir)
    print(f"\nlr 1.0, clip 0.01: {done[0].reason} at step {done[0].step}, "
          f"{len(kinds(events, WarningEvent))} warnings, last loss {kinds(events, StepEvent)[-1].loss:.3f}")


def test_non_finite_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, in_process_worker):
    """Force the loss to NaN from the 8th step on: the guard skips those updates, warns, gives up after
    MAX_BAD_STEPS with DoneEvent(reason "error"), and the last good checkpoint (step 5) is intact and resumes."""
    import slm_blocks.training.loop as training

    calls = {"n": 0}
    real_loss = training.lm_loss

    def nan_loss(model, x, y, *parts):
        calls["n"] += 1
        loss = real_loss(model, x, y, *parts)
        return loss * float("nan") if calls["n"] >= 8 else loss

    monkeypatch.setattr(training, "lm_loss", nan_loss)
    run_dir = tmp_path / "runs" / "nan"
    rc, events, err = in_process_worker(job_spec(max_steps=50, spec=small_spec(), checkpoint_every=5), run_dir)
    assert rc == 1, err[-2000:]  # ended by the guard: an error exit, the events say why
    warnings = kinds(events, WarningEvent)
    assert len(warnings) == training.MAX_BAD_STEPS and all("non-finite" in w.message for w in warnings)
    done = kinds(events, DoneEvent)
    assert len(done) == 1 and done[0].reason == "error" and done[0].step == 7, done
    assert "last good checkpoint is kept" in done[0].message
    assert assert_checkpoints_complete(run_dir) == [5]

    # what the app shows for that event stream
    job = QueuedTraining(None, run_dir, resume=True)
    job.status = "running"
    for e in events:  # the same mapping as QueuedTraining._read
        if isinstance(e, DoneEvent):
            job.status = "error" if e.reason == "error" else e.reason
    assert job.status == "error"

    # lower the learning rate and resume from step 5 (the patch is gone: the loss is finite again)
    monkeypatch.setattr(training, "lm_loss", real_loss)
    rc, events, err = in_process_worker(resume_spec(12), run_dir)
    assert rc == 0, err[-2000:]
    assert [e.step for e in kinds(events, StepEvent)] == list(range(6, 13))
    assert kinds(events, DoneEvent)[-1].reason == "max_steps"


# ----------------------------------------------------------------------------- 5. session cleanup


def _worker_gone(job: QueuedTraining, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if job.proc is not None and job.proc.poll() is not None:
            return True
        time.sleep(0.1)
    return False


def test_session_store_close_stops_running_and_queued_jobs(tmp_path):
    """SessionStore directly: one trainer slot; session A trains, session B waits in line. Closing B drops its
    queued job (it never starts); closing A stops its worker, and both folders go away."""
    import torch

    from slm_blocks.ui.state import Limits, SessionRun, SessionStore

    store = SessionStore(Limits(data_dir=tmp_path, max_concurrent=1))
    a, b = store.get("sess-a"), store.get("sess-b")
    run_a = SessionRun("a", a.root / "runs" / "a")
    run_b = SessionRun("b", b.root / "runs" / "b")
    run_a.job = store.queue.submit(entry(job_spec(max_steps=100_000, checkpoint_every=0), run_a.dir))
    run_b.job = store.queue.submit(entry(job_spec(max_steps=10), run_b.dir))
    a.runs["a"], b.runs["b"] = run_a, run_b
    store.models.put("sess-a", "fake", (torch.nn.Linear(2, 2), object()))  # a loaded model of A's
    try:
        wait_until(run_a.job, lambda ev: kinds(ev, StepEvent), what="A's first step")
        assert run_b.job.status == "queued" and store.queue.position(run_b.job) == 1

        store.close("sess-b")
        assert "sess-b" not in store.sessions
        assert run_b.job.status == "stopped" and run_b.job.proc is None
        assert store.queue.position(run_b.job) == 0

        store.close("sess-a")
        assert "sess-a" not in store.sessions and store.models.names("sess-a") == []
        assert _worker_gone(run_a.job, 60), "A's worker did not exit after its session closed"
        end = time.time() + 30
        while (a.root.exists() or b.root.exists()) and time.time() < end:
            time.sleep(0.1)
        assert not a.root.exists() and not b.root.exists()
        assert run_a.job.status == "stopped", (run_a.job.status, run_a.job.message)
        assert run_b.job.proc is None, "a job cancelled while queued must never start"
        assert store.queue.wait_idle(10)
        store.close("sess-a")  # closing twice is harmless
        assert not (tmp_path / "sessions" / "sess-a").exists()
    finally:
        for job in (run_a.job, run_b.job):
            job.kill()


@pytest.fixture
def app(tmp_path, monkeypatch):
    from slm_blocks.ui.state import Limits, SessionStore

    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.5")  # a closed client is noticed within a second
    store = SessionStore(Limits(data_dir=tmp_path / "app", max_concurrent=1, max_time_s=300))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'unused.db'}")
    with running_app(store) as (demo, url):
        yield demo, url, store


def _train_args(name, max_steps):
    spec = small_spec(seq=32, d_model=32, layers=1).to_json()
    return [app_job(name, max_steps, spec=spec, batch_size=2, eval_every=1000), None]


def test_closing_the_client_stops_training_frees_models_and_deletes_files(app, tmp_path):
    """A real client: a finished run with its model loaded for generation, and a second run training. Closing
    the client (its heartbeat ends, Gradio calls demo.unload) stops the worker, drops the model and deletes the
    session folder."""
    from gradio_client import Client

    demo, url, store = app
    c = Client(url, verbose=False)
    sid = c.session_hash
    status = c.predict(*_train_args("first", 10), api_name="/train")[0]
    assert "Done" in status, status
    text = c.predict("first", "Once ", 8, 0.8, 50, 1.0, 1.0, "1", api_name="/generate")
    assert text.startswith("Once ") and "⚠️" not in text, text
    session = store.sessions[sid]
    assert store.models.names(sid) == ["first"]
    model_ref = weakref.ref(store.models.peek(sid, "first")[0])

    stream = c.submit(*_train_args("second", 20_000), api_name="/train")
    end = time.time() + 60
    while not ("second" in session.runs and session.runs["second"].job.status == "running"
               and kinds(session.runs["second"].job.events, StepEvent)):
        assert time.time() < end and not stream.done(), \
            f"the second run did not start: {[o[0][:100] for o in stream.outputs()][-3:]}"
        time.sleep(0.2)
    job = session.runs["second"].job
    root = session.root
    assert root.is_dir() and (root / "runs" / "second").is_dir()

    closed_at = time.time()
    c.close()
    end = closed_at + 60
    while sid in store.sessions and time.time() < end:
        time.sleep(0.1)
    assert sid not in store.sessions, "demo.unload did not close the session within 60 s of client.close()"
    assert _worker_gone(job, max(1.0, end - time.time())), "the worker still runs after the session closed"
    while root.exists() and time.time() < end:
        time.sleep(0.1)
    assert not root.exists(), f"the session folder is still there: {list(root.rglob('*'))[:10]}"
    assert job.status == "stopped", (job.status, job.message)
    assert store.models.names(sid) == []
    del session
    gc.collect()
    assert model_ref() is None, "the session's model is still referenced after the session closed"
    # nothing of the closed session comes back later (e.g. a late event handler re-creating it)
    time.sleep(2)
    assert sid not in store.sessions and not root.exists()
    assert not (store.limits.data_dir / "sessions" / sid).exists()
    print(f"\nsession closed {time.time() - closed_at:.1f} s after client.close()")
