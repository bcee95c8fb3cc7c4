"""Gradio's folder of uploads and downloads is inside the app's budgets: uploads are capped per client address
and for the folder as a whole, an upload is deleted there once the session has its own copy (and a second event
with the same file still works), an export is served without a second copy, and the disk budget counts the
folder. The red team filled it from 57 MB to 1 GB in 22 s with anonymous uploads (kept for 2 hours)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import app_job, running_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MB = 2**20


@pytest.fixture
def app(tmp_path, monkeypatch, mlflow_uri):
    from slm_blocks.ui.state import Limits, SessionStore

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # this app's own upload folder
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    store = SessionStore(Limits(data_dir=tmp_path / "data", uploads_per_client_mb=3, upload_space_mb=6,
                                max_time_s=300))
    with running_app(store) as (demo, url):
        monkeypatch.setenv("SLM_TRUSTED_PROXIES", "1")  # a proxy in front: each test client has its own address
        yield url, store, tmp_path / "gradio"


def upload(url: str, content: bytes, name: str, client: str) -> tuple[int, str]:
    import httpx

    r = httpx.post(f"{url}gradio_api/upload", files=[("files", (name, content))],
                   headers={"x-forwarded-for": client}, timeout=60)
    return r.status_code, r.text


def call(url: str, api: str, data: list, session: str) -> list:
    """A queued call as a browser tab makes it (its session hash); the final output."""
    import httpx

    r = httpx.post(f"{url}gradio_api/call/{api}", json={"data": data, "session_hash": session}, timeout=60)
    r.raise_for_status()
    with httpx.stream("GET", f"{url}gradio_api/call/{api}/{r.json()['event_id']}", timeout=300) as s:
        text = "".join(s.iter_text())
    return json.loads([line[5:] for line in text.splitlines() if line.startswith("data:")][-1])


def test_uploads_are_capped_per_client_and_in_all(app):
    url, _, _ = app
    piece = b"x" * int(0.9 * MB)
    answers = [upload(url, piece, f"a{i}.txt", "10.0.0.1") for i in range(4)]
    assert [s for s, _ in answers[:3]] == [200, 200, 200], answers
    assert answers[3][0] == 413 and "uploads from your address" in answers[3][1], answers[3]
    # other visitors still upload until the folder (6 MB for everyone) is full
    others = [upload(url, piece, f"b{i}.txt", f"10.0.1.{i}") for i in range(6)]
    assert others[0][0] == 200 and others[-1][0] == 413 and "upload space for all users is full" in others[-1][1]


def test_an_upload_is_gone_from_gradios_folder_once_the_session_has_it(app, tmp_path):
    url, store, gradio_dir = app
    text = ("ROMEO: But soft, what light through yonder window breaks?\n" * 400).encode()
    status, body = upload(url, text, "plays.txt", "10.0.0.9")
    assert status == 200, body
    (path,) = json.loads(body)
    assert Path(path).is_file() and Path(gradio_dir) in Path(path).parents
    job = app_job("from-upload", 4)
    job["data"] = {"source": "files"}
    files = [{"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "plays.txt"}]
    for _ in range(2):  # the page sends the same path with every later event
        preview = call(url, "preview", [job, files], "learner")
        assert isinstance(preview, list) and "parameters" in preview[0] and "⚠️" not in preview[0], preview
        assert not Path(path).exists(), "Gradio's copy of the upload is still there"
    session = store.get("learner")
    copies = list((session.root / "uploads").glob("plays*.txt"))
    assert len(copies) == 1 and copies[0].read_bytes() == text
    status = call(url, "train", [job, files], "learner")[0]
    assert "Done" in status or "done" in status.lower(), status
    assert store.disk_used_mb(max_age_s=0) * MB >= sum(p.stat().st_size for p in Path(gradio_dir).rglob("*")
                                                        if p.is_file())
    # the export is served from Gradio's folder without a second copy of the zip anywhere
    out = call(url, "export", ["from-upload"], "learner")
    assert out[1].startswith("✅"), out[1]
    zips = [p for root in (session.root, Path(gradio_dir)) for p in root.rglob("*.zip")]
    assert len(zips) == 1, zips
    store.close("learner")
    from app_process import wait_until

    wait_until(lambda: not list(Path(gradio_dir).rglob("*.zip")), 60, "the closed session's download to go")
