"""Workspaces: where a learner's runs, uploads, imports and exports live, so their work outlives a browser tab.

A workspace is a key and a folder under `<data dir>/workspaces/`. Which one a page gets:

- local mode (a person running the app on their own machine): one workspace, `local`, kept forever;
- shared mode (a Space): a signed-in visitor's is named by their Hub username (any tab, any device); an
  anonymous visitor's by the hash of a random secret kept in their browser's localStorage (gr.BrowserState,
  encrypted with the server's browser key). The secret itself never leaves that round trip: it is not in a
  URL, a folder name, a log or the page, and the folder is named by its SHA-256, so reading the server's
  disk does not give it away. An anonymous workspace idle for SLM_WORKSPACE_TTL is deleted by the sweeper.

A client that never binds (a REST client, or a page before its load event) keeps an ephemeral session under
`<data dir>/sessions/`, closed with its tab as before. Workspace keys start with "ws." and a session's key is
a safe_name (never a dot), so no session hash a client picks can name a workspace.

A run's state on disk (for runs no live process is training): `ended.json`, written by the job when it ends
(training/jobs.py), else "interrupted" (the app stopped while it trained; Resume continues it from its last
checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from pathlib import Path

from ..training.run import ENDED, END_STATES

PREFIX = "ws."
LOCAL = PREFIX + "local"
SECRET_HEX = 64  # 256 random bits
LAST_SEEN = ".last_seen"  # in a workspace folder: touched at most once a minute while it is used
_HEX = re.compile(rf"[0-9a-f]{{{SECRET_HEX}}}")


def mode_from_env() -> str:
    """SLM_MODE (local | shared); by default shared on a Space (SPACE_ID set), local otherwise."""
    mode = os.environ.get("SLM_MODE", "").strip().lower()
    if mode in ("local", "shared"):
        return mode
    return "shared" if os.environ.get("SPACE_ID") else "local"


def new_secret() -> str:
    return secrets.token_hex(SECRET_HEX // 2)


def valid_secret(value) -> bool:
    return isinstance(value, str) and bool(_HEX.fullmatch(value))


def anonymous_key(secret: str) -> str:
    return PREFIX + "anon-" + hashlib.sha256(secret.encode()).hexdigest()[:40]


def user_key(username: str) -> str:
    """A Hub username as a folder name: readable, with a hash of the exact name so that two names that read
    alike once made safe ('a.b', 'a-b') never share a workspace."""
    name = username.lower()
    readable = re.sub(r"[^a-z0-9_-]+", "-", name).strip("-_")[:48] or "user"
    return PREFIX + "user-" + readable + "-" + hashlib.sha256(name.encode()).hexdigest()[:10]


def is_workspace(key: str) -> bool:
    return key.startswith(PREFIX)


def folder(data_dir: Path, key: str) -> Path:
    return Path(data_dir) / "workspaces" / key.removeprefix(PREFIX)


def browser_key(data_dir: Path) -> str:
    """The key the browser's stored secret is encrypted with: SLM_BROWSER_KEY, else one made once and kept in
    the data folder (readable by the app's user only), so a stored workspace survives an app restart."""
    given = os.environ.get("SLM_BROWSER_KEY")
    if given:
        return given
    path = Path(data_dir) / ".browser_key"
    try:
        return path.read_text().strip()
    except OSError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key)
        return key


# ----------------------------------------------------------------------------- what a workspace folder holds


def scan_runs(root: Path) -> dict[str, Path]:
    """The runs in a folder of runs (each a folder with run.json), oldest first."""
    found = [p.parent for p in Path(root).glob("*/run.json")]
    found.sort(key=lambda p: (p / "run.json").stat().st_mtime)
    return {p.name: p for p in found}


def scan_imports(root: Path) -> dict[str, Path]:
    found = [p for p in (Path(root) / "imports").glob("*") if p.is_dir()]
    found.sort(key=lambda p: p.stat().st_mtime)
    return {p.name: p for p in found}


def disk_status(run_dir: Path) -> str:
    """How a run no process is training ended: done / stopped / error, or interrupted (no end recorded)."""
    try:
        status = json.loads((Path(run_dir) / ENDED).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return "interrupted"
    return status if status in END_STATES else "interrupted"


def touch(root: Path, every_s: float = 60.0) -> None:
    """Mark a workspace as used now (what its time to live counts from), at most once per `every_s`."""
    path = Path(root) / LAST_SEEN
    try:
        if time.time() - path.stat().st_mtime < every_s:
            return
    except OSError:
        pass
    try:
        path.touch()
    except OSError:
        pass


def last_seen(root: Path) -> float:
    for p in (Path(root) / LAST_SEEN, Path(root)):
        try:
            return p.stat().st_mtime
        except OSError:
            continue
    return 0.0
