"""Files uploaded to import a model: the files of an exported folder, or the .zip the Share tab itself offers
for download. Everything lands flat in one session folder under a safe name; pickles are refused, and a zip is
read member by member with its unpacked size capped (a small zip can unpack to gigabytes)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from .state import safe_filename
from .uploads import UserError, refuse_pickle, upload_path

def gather_import_files(files, folder: Path, max_bytes: int) -> list[Path]:
    """Copy uploaded files into `folder`, unpacking any .zip to at most `max_bytes`; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for f in files if isinstance(files, list) else [files]:
        src = f if isinstance(f, Path) else upload_path(f)  # (a Path's .name is its base name, not the path)
        if src.suffix.lower() == ".zip":
            written += _unzip(src, folder, max_bytes)
        else:
            refuse_pickle(src, "Import")
            dest = folder / safe_filename(src.name)
            shutil.copyfile(src, dest)
            written.append(dest)
    return written


def _unzip(src: Path, folder: Path, max_bytes: int) -> list[Path]:
    try:
        archive = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError):
        raise UserError(f"Import: {src.name!r} is not a readable zip file; upload the .zip from the Share tab's "
                        "Export, or the folder's files themselves") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not Path(m.filename).name.startswith(".")]
        if sum(m.file_size for m in members) > max_bytes:
            raise UserError(f"Import: {src.name!r} unpacks to more than {max_bytes // 2**20} MB; upload a smaller "
                            "model")
        names = [safe_filename(Path(m.filename).name) for m in members]
        if len(set(names)) != len(names):
            raise UserError(f"Import: {src.name!r} holds several files with the same name; zip one model folder")
        written = []
        for m, name in zip(members, names):
            refuse_pickle(Path(name), "Import")
            dest = folder / name
            try:  # zipfile stops each member at its declared size and checks its CRC
                with archive.open(m) as r, open(dest, "wb") as w:
                    shutil.copyfileobj(r, w, 1 << 20)
            except (zipfile.BadZipFile, OSError, EOFError):
                raise UserError(f"Import: {src.name!r} is damaged; download the export again") from None
            written.append(dest)
    return written
