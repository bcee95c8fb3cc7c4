"""The app's training worker for jobs that start from weights or learn from a teacher:

    python -m slm_blocks.grow.worker WORK.json

training/worker.py, handed this layer's preparer (training imports nothing from above; see
training/driver.py, growth_hook). The app picks it for such jobs (ui/grow_actions.py, `worker_for`).
"""

from __future__ import annotations

import sys

from ..training.worker import main as _main
from .prepare import prepare_grown_run


def main(work_file: str) -> int:
    return _main(work_file, grow_prepare=prepare_grown_run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
