"""Files users upload: which kinds are accepted where, and copying them into the session's own folder.

One list of refused suffixes for every upload widget: pickle-based formats (torch, numpy, joblib) can run
code when loaded, and nothing in the app ever unpickles a user's file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .state import safe_name

PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib"})
DATA_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".csv", ".parquet")


class UserError(ValueError):
    """A problem the user can fix; shown as is."""


def upload_path(f) -> Path:
    """The server path of one uploaded file as Gradio hands it over (a path string or a file object)."""
    return Path(f if isinstance(f, str) else getattr(f, "name", f))


def refuse_pickle(src: Path, where: str) -> None:
    if src.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(f"{where}: {src.name!r} is a pickle-based file, which can run code when it is loaded; "
                        "use safetensors for model weights and text formats for data")


def copy_data_uploads(files, out_dir: Path, max_mb: int) -> list[str]:
    """Check and copy uploaded data files into `out_dir`; returns their new paths."""
    if not files:
        raise UserError("Upload: no file was given; choose one or more " + "/".join(DATA_SUFFIXES) + " files")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files if isinstance(files, list) else [files]:
        src = upload_path(f)
        refuse_pickle(src, "Upload")
        ext = src.suffix.lower()
        if ext not in DATA_SUFFIXES:
            raise UserError(f"Upload: {src.name!r} has an unsupported type; use " + ", ".join(DATA_SUFFIXES))
        if src.stat().st_size > max_mb * 1024 * 1024:
            raise UserError(f"Upload: {src.name!r} is larger than {max_mb} MB; use a smaller file or a Hub dataset")
        dest = out_dir / (safe_name(src.stem, "data") + ext)
        shutil.copyfile(src, dest)
        paths.append(str(dest))
    return paths
