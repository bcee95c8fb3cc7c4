"""Files users upload: which kinds are accepted where, and copying them into the session's own folder.

One list of refused suffixes for every upload widget: pickle-based formats (torch, numpy, joblib) can run
code when loaded, and nothing in the app ever unpickles a user's file.

Gradio keeps every upload in its own upload folder, outside any session's quota, for hours; an upload is
therefore deleted there as soon as it is copied into the session (`discard_upload`), and the session remembers
which copy it made (`consumed`), since the page keeps sending the original's path with every later event.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .gradio_folder import served_folder, upload_folder
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


def discard_upload(src: Path) -> None:
    """Delete Gradio's copy of an upload once the app has its own (never a file outside Gradio's folder)."""
    try:
        folder = upload_folder().resolve()
        path = src.resolve()
        if folder in path.parents:
            path.unlink(missing_ok=True)
            if path.parent != folder:
                path.parent.rmdir()  # Gradio's per-upload folder, when nothing else is in it
    except OSError:
        pass


def archive_for_download(session_id: str, folder: Path, name: str) -> str:
    """A .zip of `folder` for a download button, written where Gradio serves files from, so Gradio does not
    keep a second copy of it; the session's folder keeps only the unpacked export."""
    out = served_folder(session_id)
    out.mkdir(parents=True, exist_ok=True)
    return shutil.make_archive(str(out / name), "zip", folder)


def file_for_download(session_id: str, path: Path) -> str:
    """`path` offered for download without Gradio copying it: a hard link in the served folder (a copy when
    the two folders are on different file systems)."""
    out = served_folder(session_id)
    out.mkdir(parents=True, exist_ok=True)
    target = out / path.name
    target.unlink(missing_ok=True)
    try:
        os.link(path, target)
    except OSError:
        shutil.copyfile(path, target)
    return str(target)


def copy_data_uploads(files, out_dir: Path, max_mb: int, consumed: dict | None = None) -> list[str]:
    """Check and copy uploaded data files into `out_dir`; returns their new paths. `consumed` (the session's
    record, original path -> copy) makes a second call for the same upload reuse its copy; Gradio's own copy is
    deleted after the first."""
    if not files:
        raise UserError("Upload: no file was given; choose one or more " + "/".join(DATA_SUFFIXES) + " files")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files if isinstance(files, list) else [files]:
        src = upload_path(f)
        known = (consumed or {}).get(str(src))
        if known and Path(known).is_file():
            paths.append(known)
            continue
        refuse_pickle(src, "Upload")
        ext = src.suffix.lower()
        if ext not in DATA_SUFFIXES:
            raise UserError(f"Upload: {src.name!r} has an unsupported type; use " + ", ".join(DATA_SUFFIXES))
        if not src.is_file():
            raise UserError(f"Upload: {src.name!r} is no longer on the server; upload it again")
        if src.stat().st_size > max_mb * 1024 * 1024:
            raise UserError(f"Upload: {src.name!r} is larger than {max_mb} MB; use a smaller file or a Hub dataset")
        stem, n = safe_name(src.stem, "data"), 1
        dest = out_dir / (stem + ext)
        taken = set((consumed or {}).values())
        while str(dest) in taken:  # another upload of the same name keeps its own copy
            n += 1
            dest = out_dir / f"{stem}-{n}{ext}"
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".upload-")
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)  # whole or not at all: a preview reading it never sees half a file
        paths.append(str(dest))
        if consumed is not None:
            consumed[str(src)] = str(dest)
            discard_upload(src)
    return paths
