"""Work that outlives the page, in a real browser (shared mode, as on a Space): a learner starts a training and
reloads; the run is listed, still training, its curve whole, and the status goes on streaming. A new browser
window with the same stored state finds the same; a fresh one finds none of it, and the stored secret shows
nowhere in the page or its address. Then the learner deletes the workspace."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
from browser_util import CHROMIUM, field, no_traceback, shot, wait_for  # noqa: E402

if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

STEP = re.compile(r"step (\d[\d,]*)", re.IGNORECASE)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    import os

    from conftest import running_app
    from slm_blocks.ui.state import Limits, SessionStore

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MLFLOW_TRACKING_URI")}
    tmp = tmp_path_factory.mktemp("workspace")
    os.environ.update(OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}")
    store = SessionStore(Limits(data_dir=tmp / "data", mode="shared", max_time_s=600))
    try:
        with running_app(store) as (_, url):
            yield store, url
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def step_shown(page) -> int:
    found = STEP.findall(page.locator("#train-status").inner_text())
    return int(found[-1].replace(",", "")) if found else -1


def test_a_training_outlives_reloads_and_windows_and_stays_private(app):
    store, url = app
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        first = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = first.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        expect(page.locator("#workspace-line")).to_contain_text("kept in this browser")
        page.get_by_role("tab", name="Train").click()
        for label, value in (("Max steps", "20000"), ("Run name", "outlives")):
            box = field(page, label)
            box.fill(value)
            box.press("Tab")
        page.locator("#train-start").click()
        expect(page.locator("#train-status")).to_contain_text("step", timeout=120_000)
        wait_for(lambda: step_shown(page) >= 5, 120, "five steps")
        session = next(s for s in store.sessions.values() if "outlives" in s.runs)
        job = session.runs["outlives"].job

        page.reload()  # F5: the run is there, still training, its whole curve, and the status streams on
        expect(page.locator("#workspace-line")).to_contain_text("1 run")
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#train-status")).to_contain_text("outlives", timeout=60_000)
        at = wait_for(lambda: step_shown(page) >= 5 and step_shown(page), 60, "the status after the reload")
        wait_for(lambda: step_shown(page) > at, 120, "the status to keep streaming")
        assert job.status == "running"
        points = page.locator("#train-plot path[aria-roledescription='line mark']")
        expect(points.first).to_be_attached(timeout=30_000)
        page.get_by_role("tab", name="Generate").click()
        expect(page.locator("body")).to_contain_text("outlives")
        shot(page, "workspace-after-reload")

        state = first.storage_state()
        html, address = page.content(), page.url
        key = store.resolve(next(s for s, k in store.bindings.items() if k == session.id))
        assert key == session.id and key.removeprefix("ws.") not in html and "anon-" not in address
        stored = [v for origin in state["origins"] for item in origin["localStorage"] for v in (item["value"],)]
        assert stored and all(v not in html for v in stored)  # what the browser keeps is not in the page
        first.close()  # the window closes: the training goes on

        assert job.status == "running"
        second = browser.new_context(storage_state=state, viewport={"width": 1280, "height": 800})
        again = second.new_page()
        again.goto(url)
        again.get_by_role("tab", name="Train").click()
        expect(again.locator("#train-status")).to_contain_text("outlives", timeout=60_000)
        at = wait_for(lambda: step_shown(again), 60, "the status in the new window")
        wait_for(lambda: step_shown(again) > at, 120, "the new window to stream")

        stranger = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        stranger.goto(url)
        expect(stranger.locator("#workspace-line")).to_contain_text("0 runs")
        stranger.get_by_role("tab", name="Generate").click()
        expect(stranger.locator("body")).not_to_contain_text("outlives")

        again.get_by_role("button", name="Stop").click()
        expect(again.locator("#train-status")).to_contain_text("Stopped", timeout=120_000)
        again.locator("#workspace-delete").click()
        again.get_by_label("Delete every run, upload, import and export here").check()
        again.get_by_role("button", name="Delete my workspace", exact=True).click()
        expect(again.locator("#workspace-line")).to_contain_text("0 runs")
        wait_for(lambda: not session.root.exists(), 60, "the workspace folder to go")
        no_traceback(again, "the workspace")
        browser.close()
    assert not errors, errors
