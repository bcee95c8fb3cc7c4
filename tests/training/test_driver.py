"""The driver the CLI and the worker share: MLflow runs always end in a final state (FAILED when training raises or
the worker is killed, KILLED when stopped), caps hold on the model the tokenizer's vocabulary really gives (before
anything is allocated), and a growth job is refused unless the growth layer's preparer is handed in."""

import os
import signal
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

import slm_blocks.training.loop as training
from conftest import small_spec
from slm_blocks.training.driver import drive
from slm_blocks.training.events import DoneEvent, ErrorEvent, ReadyEvent, StatusEvent, StepEvent
from slm_blocks.training.job import Caps, Job
from slm_blocks.training.jobs import QueuedTraining
from slm_blocks.training.run import open_run

pytestmark = pytest.mark.usefixtures("one_thread")


def job(max_steps=30, data=None, **train):
    cfg = dict(max_steps=max_steps, batch_size=2, warmup_steps=2, log_every=1, eval_every=0, sample_tokens=0,
               checkpoint_every=5, device="cpu", precision="fp32", seed=5)
    cfg.update(train)
    return Job.from_dict({"spec": small_spec().to_dict(), "data": data or {"source": "builtin", "max_chars": 60_000},
                          "train": cfg})


def run_drive(j, run_dir, stop_at=None, **kw):
    events, stop = [], threading.Event()

    def emit(ev):
        events.append(ev)
        if isinstance(ev, StepEvent) and ev.step == stop_at:
            stop.set()

    return drive(j, run_dir, emit=emit, stop=stop, **kw), events


def mlflow_run(uri, run_dir):
    return MlflowClient(tracking_uri=uri).get_run(open_run(run_dir, load_data=False).meta["mlflow_run_id"])


def test_training_that_raises_is_marked_failed(tmp_path, monkeypatch, mlflow_uri, capsys):
    real, calls = training.lm_loss, {"n": 0}

    def broken(model, x, y, *parts):
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("a bug deep in training")
        return real(model, x, y, *parts)

    monkeypatch.setattr(training, "lm_loss", broken)
    code, events = run_drive(job(), tmp_path / "raises", mlflow_uri=mlflow_uri)
    assert code == 1
    assert isinstance(events[-1], ErrorEvent) and "a bug deep in training" in events[-1].message
    assert "Traceback" not in events[-1].message and "last checkpoint is kept" in events[-1].message
    assert [type(e) for e in events[:3]] == [StatusEvent, StatusEvent, StatusEvent]
    assert any(isinstance(e, ReadyEvent) for e in events)
    r = mlflow_run(mlflow_uri, tmp_path / "raises")
    assert r.info.status == "FAILED" and "a bug deep in training" in r.data.tags["slm.error"]
    assert "Traceback" in capsys.readouterr().err  # the details go to the log (stderr), not the user


def test_stopped_and_finished_runs_end_in_their_state(tmp_path, mlflow_uri):
    code, events = run_drive(job(max_steps=100), tmp_path / "stopped", stop_at=3, mlflow_uri=mlflow_uri)
    assert code == 0 and events[-1].reason == "stopped"
    assert mlflow_run(mlflow_uri, tmp_path / "stopped").info.status == "KILLED"
    code, events = run_drive(None, tmp_path / "stopped", resume=True, train_overrides={"max_steps": 6},
                             mlflow_uri=mlflow_uri)
    assert code == 0 and isinstance(events[-1], DoneEvent) and events[-1].step == 6
    r = mlflow_run(mlflow_uri, tmp_path / "stopped")
    assert r.info.status == "FINISHED" and r.data.tags["slm.end_reason"] == "max_steps"


def test_a_killed_worker_leaves_its_mlflow_run_failed_not_running(tmp_path, mlflow_uri, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_dir = tmp_path / "runs" / "killed"
    entry = QueuedTraining(job(max_steps=100_000, checkpoint_every=0), run_dir, mlflow_uri=mlflow_uri)
    exited = threading.Event()
    entry._start(lambda e: exited.set())
    try:
        end = time.time() + 90
        while not any(isinstance(e, StepEvent) for e in entry.events):
            assert time.time() < end and not entry.finished, (entry.status, entry.message)
            entry.wait_for_change(len(entry.events), 0.5)
        assert mlflow_run(mlflow_uri, run_dir).info.status == "RUNNING"
        os.kill(entry.proc.pid, signal.SIGKILL)
        assert exited.wait(30)
    finally:
        entry.kill()
    assert entry.status == "error" and "exited unexpectedly" in entry.message
    r = mlflow_run(mlflow_uri, run_dir)
    assert r.info.status == "FAILED" and "exited unexpectedly" in r.data.tags["slm.error"]


def test_a_growth_job_needs_the_growth_layers_preparer(tmp_path):
    """training imports nothing from above: a job with init_from / teacher runs only when the entry point hands in
    slm_blocks.grow's preparer (the CLI, the app's grow worker); without it, it is refused before anything is
    prepared (tests/grow cover the real thing)."""
    for init_from, teacher, field in (("owner/model", None, "init_from"), (None, {"source": "owner/model"}, "teacher")):
        j = job()
        j.init_from = init_from
        if teacher:
            from slm_blocks.training.job import TeacherConfig

            j.teacher = TeacherConfig(**teacher)
        code, events = run_drive(j, tmp_path / "grow", track=False)
        assert code == 2 and field in events[-1].message and "slm_blocks.grow" in events[-1].message
        assert not (tmp_path / "grow").exists()


def test_caps_hold_on_the_vocabulary_the_tokenizer_really_gives(tmp_path, monkeypatch):
    """A tiny spec (vocab 65 on Build) with a char tokenizer over text of 20,000 distinct characters (and a newline) is a model
    several times over the cap: refused after the tokenizer is built, before any model is allocated."""
    import slm_blocks.model.modeling as modeling

    def no_model(*a, **k):
        raise AssertionError("a model was allocated before the caps were checked")

    monkeypatch.setattr(modeling, "build_model", no_model)
    text = "".join(chr(0x4E00 + i) for i in range(20_000))
    data = tmp_path / "wide.txt"
    data.write_text("\n".join(text[i:i + 50] for i in range(0, len(text), 50)) * 3, encoding="utf-8")
    caps = Caps(max_params=200_000)
    j = job(data={"source": "files", "paths": [str(data)]})
    assert not j.cap_problems(caps)  # the spec as written fits
    code, events = run_drive(j, tmp_path / "wide", caps=caps, track=False)
    assert code == 2, events[-1]
    msg = events[-1].message
    assert "char tokenizer" in msg and "20,004 tokens" in msg and "over this app's cap" in msg, msg
    assert not (tmp_path / "wide" / "run.json").exists()
    # and the training-memory cap, on the same real vocabulary
    code, events = run_drive(job(data={"source": "files", "paths": [str(data)]}, batch_size=64), tmp_path / "mem",
                             caps=Caps(max_train_mb=50), track=False)
    assert code == 2 and "memory" in events[-1].message and "train.batch_size" in events[-1].message
