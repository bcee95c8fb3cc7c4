"""A training worker process: runs the driver on one job file, writing one encoded event per line to stdout.

    python -m slm_blocks.training.worker WORK.json

WORK.json = {"job": <Job.to_dict()> | null, "run_dir": ..., "resume": false, "extra_steps": 0,
             "train_overrides": null, "caps": <Caps.to_dict()> | null, "mlflow": true, "mlflow_uri": ...}

The app runs every training in its own worker so a crash, an out-of-memory kill or accelerate's
process-wide state never touches the app or another user's run. Writing "stop" on stdin stops training
cooperatively (a resumable checkpoint is written); so does SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from .events import ErrorEvent, encode


def emit(event) -> None:
    sys.stdout.write(json.dumps(encode(event)) + "\n")
    sys.stdout.flush()


def _watch_stdin(stop: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "stop":
            stop.set()
            return
    stop.set()  # the app went away: stop and keep a checkpoint


def main(work_file: str, grow_prepare=None) -> int:
    """Run the work file's job; `grow_prepare`: see driver.growth_hook (slm_blocks/grow/worker.py hands it in)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
    try:
        from .driver import drive
        from .hub_access import adopt_worker_env
        from .job import Caps, Job

        adopt_worker_env()  # whose Hub credentials this job's reads use (the app's visitor, never the server's)

        work = json.loads(Path(work_file).read_text())
        job = Job.from_dict(work["job"]) if work.get("job") is not None else None
        caps = Caps(**work["caps"]) if work.get("caps") else None
    except Exception as e:  # a malformed work file is the app's bug, but it still gets a message, not silence
        emit(ErrorEvent(f"the training job could not be read ({type(e).__name__}: {str(e)[:300]})"))
        return 2
    return drive(job, work["run_dir"], emit=emit, resume=bool(work.get("resume")),
                 extra_steps=int(work.get("extra_steps") or 0), train_overrides=work.get("train_overrides"),
                 caps=caps, stop=stop, grow_prepare=grow_prepare,
                 track=work.get("mlflow", True), mlflow_uri=work.get("mlflow_uri"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
