"""Gradio's own folder: where it keeps uploads and the files it serves (GRADIO_TEMP_DIR, else the system's temp
folder). The app writes downloads into it (one folder per session) so Gradio serves them without a copy of its
own, and counts it in the disk budget."""

from __future__ import annotations

from pathlib import Path

SERVED = "slm-served"  # the files a session downloads (exports), one folder per session


def upload_folder() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def served_folder(session_id: str) -> Path:
    return upload_folder() / SERVED / session_id
