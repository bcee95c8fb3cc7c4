"""The app exactly as `python app.py` starts it: a subprocess whose `launch()` blocks, configured only by its
command line and environment. Tests that check what must hold for a real deployment (caps installed at
start-up, the sweeper running, whose credentials reach the Hub) use this instead of an in-process launch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the test session runs offline; an app process that must reach a fake Hub endpoint drops these
OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path, data_dir: Path):
        self.proc, self.url, self.log, self.data_dir = proc, url, log, data_dir

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


def wait_until(check, timeout: float, what: str, every: float = 0.2):
    """Poll `check()` until it returns something truthy (returned) or `timeout` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


@contextmanager
def app_process(tmp: Path, env: dict | None = None, args: tuple = (), online: bool = False,
                start_timeout: float = 180):
    """`python app.py --port P` with SLM_DATA_DIR in `tmp`; yields an AppProcess once the page answers, stops it
    (SIGINT, then SIGKILL) afterwards. `env` entries of None are removed from the environment."""
    import httpx

    port = free_port()
    data_dir = tmp / "data"
    log = tmp / "app.log"
    full = {**os.environ, "SLM_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "GRADIO_ANALYTICS_ENABLED": "False", "SLM_MODE": "shared"}  # a Space's app (env may say local)
    if online:
        for k in OFFLINE:
            full.pop(k, None)
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = str(v)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--host", "127.0.0.1", *args],
                                cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    app = AppProcess(proc, url, log, data_dir)

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"app.py exited with {proc.returncode}:\n{app.output()[-3000:]}")
        try:
            return httpx.get(url + "gradio_api/info", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, start_timeout, "app.py to answer", every=0.5)
        yield app
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
