"""A training worker process: prepares (or reopens) a run and trains it, printing one JSON event per line.

    python -m slm_blocks.training.worker JOB.json

The app runs every training in its own worker so a crash, an out-of-memory kill or accelerate's
process-wide state never touches the app or another user's run. Writing "stop" on stdin stops training
cooperatively (a resumable checkpoint is written); so does SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import traceback
from dataclasses import asdict
from pathlib import Path


def emit(kind: str, **data) -> None:
    sys.stdout.write(json.dumps({"event": kind, **data}) + "\n")
    sys.stdout.flush()


def _watch_stdin(stop: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "stop":
            stop.set()
            return
    stop.set()  # the app went away: stop and keep a checkpoint


def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return oom is not None and isinstance(e, oom)


def main(job_file: str) -> int:
    job = json.loads(Path(job_file).read_text())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
    try:
        from .data import DataConfig
        from .run import TokenizerConfig, open_run, prepare_run
        from ..model.spec import ModelSpec
        from .tracking import Tracker
        from .config import TrainConfig
        from .loop import train

        run_dir = Path(job["run_dir"])
        if job.get("resume"):
            emit("status", message="reopening the run")
            run = open_run(run_dir, train_overrides=job.get("train_overrides"))
            run.save()  # the new step limit is the run's setting from now on
        else:
            emit("status", message="loading data and building the tokenizer")
            run = prepare_run(run_dir, ModelSpec.from_dict(job["spec"]), DataConfig.from_dict(job["data"]),
                              TokenizerConfig(**job["tokenizer"]), TrainConfig.from_dict(job["train"]))
        emit("ready", vocab_size=run.spec.vocab_size, train_tokens=len(run.train_tokens),
             val_tokens=len(run.val_tokens), data=run.corpus.name, max_steps=run.train_config.max_steps)
        tracker = None
        if job.get("mlflow", True):
            try:
                tracker = Tracker(run, uri=job.get("mlflow_uri"))
            except Exception as e:  # tracking must never block training
                emit("warning", step=0, message=f"MLflow tracking is off for this run: {type(e).__name__}: {e}")
        ok = True
        for event in train(run, stop=stop):
            if tracker:
                tracker.on_event(event)
            emit(type(event).__name__, **asdict(event))
            ok = ok and getattr(event, "reason", None) != "error"
        return 0 if ok else 1
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # user-fixable: the message says how
        emit("error", message=str(e))
        return 2
    except Exception as e:
        if _out_of_memory(e):  # host RAM (MemoryError) or the GPU's (torch.OutOfMemoryError, a RuntimeError)
            emit("error", message="out of memory: make the model or the batch smaller (the estimate on the Build "
                 "tab shows training memory)")
            return 3
        # a bug: short message for the UI, traceback to stderr for the logs
        traceback.print_exc()
        emit("error", message=f"training failed ({type(e).__name__}: {e}); the last checkpoint is kept")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
