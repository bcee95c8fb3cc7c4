"""Time to the first sample, as a learner sees it: `python app.py` with defaults, a real browser (Debian
chromium), the Train tab, Start training, and the seconds until the "Latest sample" box shows generated text.

The app runs as a user starts it (its own process, its default threads, a fresh data folder), so the figure
includes data preparation, the worker start-up and the first eval. It is a benchmark, not a timed test.

    python bench/bench_first_sample.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(data_dir: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    env = dict(os.environ, SLM_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url, time.perf_counter() - t0
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("the app exited before it served a page")
            time.sleep(0.2)


def first_sample(url: str, timeout: float = 300.0) -> float:
    """Seconds from clicking Start training (defaults) to generated text in the Latest sample box."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Train").click()
        box = page.get_by_label("Latest sample", exact=True)
        page.get_by_role("button", name="Start training").click()
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            text = box.input_value() or ""
            if re.search(r"step \d+", text):
                took = time.perf_counter() - t0
                print("  sample:", text.replace("\n", " | ")[:70], flush=True)
                browser.close()
                return took
            time.sleep(0.1)
        browser.close()
        raise SystemExit(f"no sample within {timeout:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(f"{'round':>5} {'app up s':>9} {'first sample s':>15}")
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            proc, url, up = start_app(Path(d))
            try:
                took = first_sample(url)
            finally:
                proc.terminate()
                proc.wait(30)
        print(f"{r + 1:>5} {up:>9.1f} {took:>15.1f}", flush=True)


if __name__ == "__main__":
    main()
