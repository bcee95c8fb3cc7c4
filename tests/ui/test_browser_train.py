"""The Train tab in a real browser, as a learner uses it: the preview before Start, a setting under Advanced, Start,
the log following its newest line, the sample timeline, Stop, then Resume with extra steps: the earlier stop's
message is gone, the step total grew, and the status is the resumed run's own. Screenshots in tests/artifacts/.

Drives Debian's chromium through the playwright package; skipped when either is missing. One tiny training on one
thread (the cores are shared): about a minute.
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
from browser_util import CHROMIUM, browser_page, field, launched_app, no_traceback, pick, shot, wait_for  # noqa: E402

if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

JS_ERRORS: list[str] = []


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with launched_app(tmp_path_factory.mktemp("browser-train")) as url, browser_page(url, JS_ERRORS) as pg:
        yield pg


def log_view(page) -> dict:
    """What the log box shows: its scroll position, its lines and the first line in view."""
    return page.evaluate("""() => {
        const t = document.querySelector('#train-log textarea');
        const lines = t.value.split('\\n');
        const lineHeight = t.scrollHeight / Math.max(1, lines.length);
        return {top: t.scrollTop, height: t.scrollHeight, client: t.clientHeight, lines: lines.length,
                in_view: lines[Math.floor(t.scrollTop / lineHeight)], first: lines[0]}; }""")


def step_in(line: str) -> int:
    """The step a log line is about (step, eval and checkpoint lines all name one)."""
    m = re.search(r"(?:step|eval)\s+(\d+)", line)
    assert m, f"no step in the log line {line!r}"
    return int(m.group(1))


def test_train_advanced_stop_resume_timeline(page):
    page.get_by_role("tab", name="Train").click()
    preview = page.locator("#train-preview")
    field(page, "Max steps").fill("3000")  # a change refreshes the preview
    field(page, "Max steps").press("Tab")
    expect(preview).to_contain_text("parameters with the char tokenizer", timeout=60_000)
    expect(preview).to_contain_text("tokens per parameter")
    expect(preview).to_contain_text("Chinchilla")
    expect(preview).to_contain_text("ETA")

    field(page, "Batch size").fill("4")
    page.get_by_text("Advanced", exact=True).click()
    advanced = page.locator("#train-advanced")
    for label, value in (("Eval + sample every (steps)", "10"), ("Log every (steps)", "1"), ("Warmup steps", "5"),
                         ("Sample length (tokens)", "24")):
        field(advanced, label).fill(value)
    pick(advanced, "Precision", "fp32")
    field(page, "Time budget (minutes)").fill("10")  # stopped long before; a busy machine must not end it first
    shot(page, "Train-advanced")

    page.get_by_role("button", name="Start training").click()
    status = page.locator("#train-status")
    expect(status).to_contain_text(re.compile(r"Step \d+/3000"), timeout=120_000)
    expect(status).to_contain_text("time ")  # the time-budget bar
    expect(status).to_contain_text(re.compile(r"Step (\d{2,})/3000"), timeout=60_000)
    # the log follows its newest line: newest first, and the box shows its top while lines keep coming
    wait_for(lambda: log_view(page)["lines"] > 30, 60, "30 log lines")
    before = log_view(page)
    page.wait_for_timeout(1500)
    pos = log_view(page)
    assert pos["height"] > pos["client"], pos  # the log overflows its box ...
    newest = step_in(pos["in_view"])
    assert newest > step_in(before["first"]), (before, pos)  # ... it moved on
    shown = int(re.search(r"Step (\d+)/3000", status.inner_text()).group(1))
    assert pos["top"] == 0 and abs(newest - shown) <= 10, (pos, shown)  # the line in view is the newest

    # the sample timeline: every eval's sample, browsable by step
    timeline = page.locator("#sample-timeline")
    expect(timeline).to_be_visible(timeout=60_000)
    wait_for(lambda: int(timeline.locator("input[type=number]").get_attribute("max") or 0) >= 30, 60,
             "three samples on the timeline")
    number = timeline.locator("input[type=number]")
    number.fill("10")
    number.press("Enter")
    at_step = page.locator("#sample-at-step textarea")
    expect(at_step).to_have_value(re.compile(r"^step 10, val loss \d"), timeout=15_000)
    number.fill("25")
    number.press("Enter")
    expect(at_step).to_have_value(re.compile(r"^step 20, val loss"), timeout=15_000)
    shot(page, "Train-running")

    # another learner (another browser, another workspace) starts while this run trains: one trainer, so they wait
    # in line and see their place and an estimated wait; they stop it (closing the tab would not: a training
    # outlives its page)
    # in a browser of their own: a second page in the same headless chromium stops the first one's animation
    # frames, and a click there waits for them forever
    other_browser = page.context.browser.browser_type.launch(executable_path=CHROMIUM, headless=True,
                                                            args=["--no-sandbox"])
    other = other_browser.new_page(viewport={"width": 1400, "height": 1000})
    other.goto(page.url)
    other.get_by_role("tab", name="Train").click()
    field(other, "Max steps").fill("20")
    other.get_by_role("button", name="Start training").click()
    queued = other.locator("#train-status")
    expect(queued).to_contain_text("you are number 1 in line", timeout=60_000)
    expect(queued).to_contain_text("estimated wait")
    shot(other, "Train-queued")
    other.get_by_role("button", name="Stop", exact=True).click()
    expect(queued).to_contain_text("Stopped", timeout=60_000)
    other_browser.close()

    page.get_by_role("button", name="Stop", exact=True).click()
    expect(status).to_contain_text("Stopped", timeout=60_000)  # (it says "Stopping" until the worker has)
    stopped_at = int(re.search(r"steps (\d+)/3000", status.inner_text()).group(1))

    # resume with extra steps: the total grows, the old stop message is gone, the status is the resumed run's
    pick(page, "Run to resume", "my-first-model")
    field(page, "Extra steps").fill("20")
    expect(page.locator("#train-resume-plan")).to_contain_text("to step 3,020", timeout=30_000)  # said before it runs
    page.get_by_role("button", name="Resume", exact=True).click()
    expect(status).to_contain_text(re.compile(r"Preparing|Waiting|Step"), timeout=30_000)
    expect(status).not_to_contain_text("Stopped")
    expect(status).to_contain_text("/3020", timeout=120_000)
    wait_for(lambda: int(re.search(r"Step (\d+)/3020", status.inner_text()).group(1)) > stopped_at + 2, 60,
             "steps after the resume")
    resumed = int(re.search(r"Step (\d+)/3020", status.inner_text()).group(1))
    assert resumed > stopped_at
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(status).to_contain_text("Stopped", timeout=60_000)
    expect(page.locator("#train-log textarea")).to_have_value(re.compile(r"^done: stopped by the user"))  # newest first
    no_traceback(page, "Train")
    shot(page, "Train-resumed")

    # "Start from" that run: the preview describes the model a fine-tune trains (the run's, not the Build tab's)
    pick(page, "Start from", "my-first-model")
    expect(preview).to_contain_text("Fine-tuning my-first-model", timeout=60_000)
    expect(preview).to_contain_text("tokens per parameter")
    shot(page, "Train-start-from")
    assert not JS_ERRORS, f"JavaScript errors on the page: {JS_ERRORS}"
