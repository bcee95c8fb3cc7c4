"""What must hold for the app as it is deployed: `python app.py` in its own process, whose launch() blocks (an
in-process launch with prevent_thread_lock returns, and once hid that the per-session queue cap and the sweeper
were installed only after launch() returned, which under app.py is never)."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from app_process import app_process, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PENDING = 3


def fn_index(url: str, api_name: str) -> int:
    import httpx

    config = httpx.get(url + "config", timeout=30).json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)


def join(url: str, fn: int, data: list, session: str) -> tuple[int, str]:
    """One event put in Gradio's queue for `session` (as a browser tab or a raw REST client does)."""
    import httpx

    r = httpx.post(url + "gradio_api/queue/join", timeout=60,
                   json={"data": data, "fn_index": fn, "session_hash": session, "event_data": None, "trigger_id": None})
    return r.status_code, r.text


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_queue_cap_and_sweeper_work_under_python_app_py(tmp_path):
    """One REST session flooding the shared queue is refused past its own cap while another visitor is served;
    the sweeper removes a crashed process's session folder at start-up and the flooder's idle session later."""
    from gradio_client import Client

    orphan = tmp_path / "data" / "sessions" / "crashed"
    orphan.mkdir(parents=True)
    (orphan / ".owner").write_text(str(dead_pid()))
    (orphan / "left-behind.txt").write_text("x" * 1000)
    env = {"SLM_MAX_PENDING_PER_SESSION": PENDING, "SLM_QUEUE_SIZE": 20, "SLM_SESSION_IDLE": 3,
           "SLM_SWEEP_INTERVAL": 1}
    with app_process(tmp_path, env) as app:
        wait_until(lambda: not orphan.exists(), 60, "the sweeper to remove the crashed process's folder")
        fn = fn_index(app.url, "compare")
        answers: list[tuple[int, str]] = []
        lock = threading.Lock()

        def flood():
            got = join(app.url, fn, [True, "step", "loss"], "flooder")  # everyone's runs: reads the MLflow store
            with lock:
                answers.append(got)

        threads = [threading.Thread(target=flood) for _ in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        refused = [text for status, text in answers if status != 200]
        assert any("This session already has" in text for text in refused), answers[:5]
        assert not any("Queue is full" in text for text in refused), refused[:3]
        assert sum(status == 200 for status, _ in answers) >= 1
        # another visitor is served at once, in full
        other = Client(app.url, verbose=False)
        problems, _summary = other.predict('{"blocks": []}', api_name="/validate_spec")
        assert "block" in problems.lower(), problems
        flooder = app.data_dir / "sessions" / "flooder"
        wait_until(flooder.exists, 30, "the flooder's session folder")
        wait_until(lambda: not flooder.exists(), 120, "the sweeper to close the idle REST session")
        other.close()
