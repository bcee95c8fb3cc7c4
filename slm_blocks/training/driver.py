"""The one training driver: what `python -m slm_blocks train` and the app's worker process both run.

    code = drive(job, run_dir, emit=print)                       # a new run
    code = drive(None, run_dir, resume=True, extra_steps=500)    # continue one

It prepares the run (or reopens it, growing it by `extra_steps` with a learning rate that continues
smoothly), tracks it in MLflow, trains it and hands every event to `emit`. Whatever happens the MLflow run
ends in a final state: FINISHED, KILLED when stopped, FAILED when training raised (a worker that dies
outright is marked FAILED by the app, see jobs.py). Under `accelerate launch` / `torchrun` rank 0
prepares, tracks and saves; `emit` hears every rank's events, `is_main` tells them apart.

Returns the exit code: 0 done, 1 training failed, 2 a problem the user can fix, 3 out of memory.
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable

from .events import DoneEvent, ErrorEvent, Event, ReadyEvent, StatusEvent, WarningEvent
from .job import Caps, Job, JobError
from .schema import Problem

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError)


def growth_hook(job: Job, grow_prepare: Callable | None = None):
    """The single place where starting from trained weights (`init_from`) and distillation from a teacher
    (`teacher`) plug in: the function that prepares such a job's run (None for a plain job: prepare_run).

    That function is `grow_prepare`, handed in by the entry point (the CLI, the app's grow worker, or
    `slm_blocks.grow.prepare.drive`): it lives in slm_blocks.grow, above sharing, because a source may be an
    exported or native transformers folder or a Hub id, and training imports nothing from above. What it leaves
    in the run folder (`init/`, `teacher/`) the loop reads with training-level code alone, so resuming needs
    nothing from above. Without it, such a job is refused before anything is prepared."""
    if not job.init_from and job.teacher is None:
        return None
    if grow_prepare is None:
        raise JobError([Problem("init_from" if job.init_from else "teacher",
                                "starting from weights and distillation are prepared by slm_blocks.grow: run this "
                                "job with `python -m slm_blocks train`, in the app, or with "
                                "slm_blocks.grow.prepare.drive")])
    return grow_prepare


def drive(job: Job | None, run_dir: str | Path, *, emit: Callable[[Event], None], resume: bool = False,
          extra_steps: int = 0, train_overrides: dict | None = None, caps: Caps | None = None,
          stop: threading.Event | None = None, accelerator=None, track: bool = True,
          mlflow_uri: str | None = None, grow_prepare: Callable | None = None) -> int:
    """Prepare or reopen, track, train; see the module docstring. `job` is None when resuming; `grow_prepare`
    prepares jobs that start from weights or learn from a teacher (see growth_hook)."""
    from .loop import train

    run_dir = Path(run_dir)
    tracker, acc = None, accelerator
    try:
        grow = None if resume else growth_hook(job, grow_prepare)  # refused here, before anything is prepared
        if acc is None:
            from accelerate import Accelerator

            acc = Accelerator(cpu=device_of(job, run_dir, train_overrides) == "cpu")
        main = acc.is_main_process
        run = _reopen(run_dir, extra_steps, train_overrides, acc, emit) if resume else \
            _prepare(job, run_dir, caps, acc, emit, grow)
        if main:
            from ..model.estimate import estimate

            emit(ReadyEvent(vocab_size=run.spec.vocab_size, params=estimate(run.spec).params,
                            train_tokens=len(run.train_tokens), val_tokens=len(run.val_tokens), data=run.corpus.name,
                            max_steps=run.train_config.max_steps, max_time=run.train_config.max_time,
                            start_step=_checkpoint_state(run.dir).get("step", 0)))
        if main and track:
            tracker = _tracker(run, mlflow_uri, emit)
        done = None
        for event in train(run, stop=stop, accelerator=acc):
            if tracker:
                tracker.on_event(event)
            emit(event)
            if isinstance(event, DoneEvent):
                done = event
        return 0 if done is not None and done.reason != "error" else 1
    except KeyboardInterrupt:
        if tracker:
            tracker.stopped("interrupted (Ctrl-C)")
        raise
    except BaseException as e:  # noqa: BLE001: every failure is reported and marked, then mapped to an exit code
        message, code = failure(e)
        if tracker:
            tracker.fail(message)
        if code == 1:
            traceback.print_exc()  # a bug: the details go to stderr (the worker's log), the message to the user
        emit(ErrorEvent(message))
        if not isinstance(e, Exception):
            raise
        return code


def failure(e: BaseException) -> tuple[str, int]:
    """(message for the user, exit code) for an exception: no traceback, the fix when there is one."""
    if _out_of_memory(e):  # host RAM (MemoryError) or the GPU's (torch.OutOfMemoryError, a RuntimeError)
        return ("out of memory: make the model or the batch smaller (the estimate on the Build tab shows "
                "training memory)", 3)
    if isinstance(e, USER_ERRORS):
        return str(e), 2
    return f"training failed ({type(e).__name__}: {str(e)[:300]}); the last checkpoint is kept", 1


def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return oom is not None and isinstance(e, oom)


def device_of(job: Job | None, run_dir: Path, overrides: dict | None) -> str:
    if overrides and overrides.get("device"):
        return overrides["device"]
    if job is not None:
        return job.train.device
    try:
        return json.loads((run_dir / "run.json").read_text())["train"].get("device", "auto")
    except (OSError, ValueError, KeyError):
        return "auto"  # open_run reports the missing or broken run folder


def _prepare(job: Job, run_dir: Path, caps: Caps | None, acc, emit, grow: Callable | None):
    from .run import open_run, prepare_run

    run = None
    if acc.is_main_process:
        status = lambda text: emit(StatusEvent(text))  # noqa: E731
        if grow is not None:
            run = grow(job, run_dir, caps=caps, status=status)
        else:
            run = prepare_run(run_dir, job.spec, job.data, job.tokenizer, job.train, caps=caps, status=status)
    acc.wait_for_everyone()
    return run if run is not None else open_run(run_dir)


def _reopen(run_dir: Path, extra_steps: int, overrides: dict | None, acc, emit):
    """Reopen a run; more steps (extra_steps, or a larger max_steps override) start a new schedule segment
    at the current learning rate, and a time-budgeted run gets a fresh budget of the same length."""
    from .config import TrainConfig
    from .run import open_run
    from .schedule import Segment, continue_with_more_steps

    if acc.is_main_process:
        emit(StatusEvent("reopening the run"))
        run = open_run(run_dir, load_data=False)
        old = run.train_config
        over = dict(overrides or {})
        cfg = TrainConfig.from_dict({**old.to_dict(), **over})
        new_max = cfg.max_steps + max(0, int(extra_steps or 0))
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "max_steps": new_max})
        state = _checkpoint_state(run_dir)
        step, elapsed = state.get("step", 0), float(state.get("elapsed_s", 0.0))
        seg = Segment.from_dict(run.meta.get("schedule"))
        if new_max > old.max_steps and step > 0:
            run.meta["schedule"] = continue_with_more_steps(step, elapsed, old, seg, new_max).to_dict()
            if old.max_time is not None and "max_time" not in over:
                cfg.max_time = elapsed + (old.max_time - seg.start_elapsed)
        if new_max < step:
            raise ValueError(f"max_steps {new_max} is below the step the run is at ({step}); give more steps")
        run.train_config = cfg
        run.save()  # the new limits and schedule are the run's settings from now on
    acc.wait_for_everyone()
    if acc.is_main_process:
        emit(StatusEvent("loading the data"))
    return open_run(run_dir)


def _checkpoint_state(run_dir: Path) -> dict:
    from .checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    return json.loads((ckpt / "trainer_state.json").read_text()) if ckpt else {}


def _tracker(run, uri: str | None, emit):
    from .tracking import Tracker

    try:
        return Tracker(run, uri=uri)
    except Exception as e:  # tracking must never block training
        emit(WarningEvent(0, f"MLflow tracking is off for this run: {type(e).__name__}: {str(e)[:200]}"))
        return None
