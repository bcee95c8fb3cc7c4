"""One real-browser pass through the app: Build (add + move a block) → Train (start, watch, stop) → Generate →
Compare → Share, with a screenshot of each tab in tests/artifacts/.

Drives Debian's chromium (/usr/bin/chromium, or $CHROMIUM) through the playwright package; skipped when either
is missing (never `playwright install`). Training is tiny and on one thread: the test takes about 30 s.
Besides the flow it pins Gradio 6 quirks the app works around: an empty optional number stays empty (Gradio's
Number shows 0), the loss plot's axes are numeric and both curves are coloured, Compare redraws its legend.
"""

from __future__ import annotations

import os
import re
import time

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

from browser_util import CHROMIUM, PARAMS, block, field, no_traceback, pick, shot  # noqa: E402

if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from slm_blocks.ui import build_app
    from slm_blocks.ui.state import Limits, SessionStore

    omp = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the training worker inherits it: the cores are shared
    demo = build_app(SessionStore(Limits(data_dir=tmp_path_factory.mktemp("browser-app")))).queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=None, quiet=True)
    yield url
    demo.close()
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


JS_ERRORS: list[str] = []  # uncaught exceptions in the page


@pytest.fixture(scope="module")
def page(app_url):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(30_000)
        pg.on("pageerror", lambda e: JS_ERRORS.append(str(e)))
        pg.goto(app_url)
        yield pg
        browser.close()


class Clock:
    def __init__(self):
        self.t0 = self.last = time.monotonic()

    def lap(self, what: str) -> None:
        now = time.monotonic()
        print(f"  [{now - self.t0:6.1f}s] {what} (+{now - self.last:.1f}s)", flush=True)
        self.last = now


def param_count(page: Page) -> str:
    m = PARAMS.search(page.locator("strong", has_text=PARAMS).first.inner_text())
    assert m, "no parameter count on the Build tab"
    return m.group(1)


def settled(box, quiet_s: float = 1.5, timeout_s: float = 60) -> str:
    """The value of a streaming textbox once it has stopped changing for quiet_s."""
    value, since, deadline = box.input_value(), time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = box.input_value()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return value


def test_build_train_generate_in_a_browser(page: Page):
    clock = Clock()
    print()

    # ------------------------------------------------------------------ Build
    expect(page.get_by_role("tab", name="Build")).to_be_visible()
    expect(page.locator("strong", has_text=PARAMS).first).to_be_visible(timeout=60_000)
    expect(page.get_by_role("button", name="↑").first).to_be_visible()
    before = param_count(page)
    clock.lap(f"page loaded, {before} parameters")

    pick(page, "Block type to add", "mlp")
    page.get_by_role("button", name="Add block", exact=True).click()
    mlp = block(page, "mlp")
    expect(mlp).to_have_count(1)
    expect(mlp.locator("strong")).to_have_text("3 · mlp")  # after the last layer, above final_norm
    expect(field(mlp, "Hidden width")).to_have_value("")  # not 0 (Gradio's Number would)
    expect(page.locator("strong", has_text=PARAMS).first).not_to_contain_text(f"{before} parameters")
    after = param_count(page)
    assert after != before, f"adding an mlp block left the parameter count at {before}"
    clock.lap(f"mlp block added: {before} → {after} parameters")

    mlp.get_by_role("button", name="↑").click()  # above the transformer
    expect(block(page, "mlp").locator("strong")).to_have_text("2 · mlp")
    expect(block(page, "transformer").locator("strong")).to_have_text("3 · transformer")
    expect(page.get_by_text("2 · mlp", exact=True)).to_have_count(2)  # the editor and the diagram
    assert param_count(page) == after  # moving a block keeps its weights
    transformer = block(page, "transformer")
    for name in ("Head size", "Sliding window", "Full attention every"):
        expect(field(transformer, name)).to_have_value("")  # still "default"
    clock.lap("mlp block moved up")

    hidden = field(block(page, "mlp"), "Hidden width")
    hidden.fill("256")
    hidden.press("Tab")  # fields apply on blur
    expect(page.locator("strong", has_text=PARAMS).first).not_to_contain_text(f"{after} parameters")
    smaller = param_count(page)
    assert smaller != after, "Hidden width 512 → 256 left the parameter count unchanged"
    expect(hidden).to_have_value("256")  # still shown after the editor re-rendered
    expect(page.get_by_text("The spec is valid.")).to_be_visible()
    clock.lap(f"Hidden width set to 256: {smaller} parameters")
    no_traceback(page, "Build")
    shot(page, "Build")

    # ------------------------------------------------------------------ Train
    page.get_by_role("tab", name="Train").click()
    # many steps so that Stop always lands mid-training; the time budget is the safety net
    field(page, "Max steps").fill("5000")
    field(page, "Batch size").fill("4")
    page.get_by_text("Advanced", exact=True).click()
    field(page, "Eval + sample every (steps)").fill("10")
    field(page, "Time budget (minutes)").fill("2")
    page.get_by_role("button", name="Start training").click()
    status = page.get_by_text(re.compile(r"^my-first-model — "))
    expect(status).to_contain_text("Step", timeout=120_000)
    clock.lap("training started: " + status.inner_text().splitlines()[0])
    expect(status).to_contain_text("val loss", timeout=60_000)  # an eval happened
    expect(status).to_contain_text(re.compile(r"Step ([2-9]\d|\d{3,})/"), timeout=60_000)  # 2+ points per curve
    plot = page.locator(".vega-embed").first  # the loss plot (vega-lite, SVG)
    expect(plot.locator("g.mark-line path").first).to_have_attribute("d", re.compile(r"\d[L ]+\d"))
    x_axis = plot.locator("g[aria-roledescription='axis'][aria-label^='X-axis']")
    expect(x_axis).to_have_attribute("aria-label", re.compile("linear scale"))  # steps as numbers, not labels
    legend = plot.locator("g[aria-roledescription='legend']")
    expect(legend).to_have_attribute("aria-label", re.compile(r"2 values: train, validation"))  # lines are coloured
    clock.lap("loss plot drawn: " + status.inner_text().splitlines()[0])

    page.get_by_role("button", name="Stop", exact=True).click()
    expect(page.get_by_text(re.compile(r"^Stopping my-first-model"))).to_be_visible()
    expect(status).to_contain_text("Stopped", timeout=60_000)
    expect(page.get_by_label("Log (newest first)", exact=True)).to_have_value(re.compile(r"^done: stopped by the user"))
    clock.lap("stopped: " + status.inner_text().splitlines()[0])
    no_traceback(page, "Train")
    shot(page, "Train")

    # ------------------------------------------------------------------ Generate
    page.get_by_role("tab", name="Generate").click()
    page.get_by_role("button", name="Refresh list").click()
    pick(page, "Model (this session's runs and imports)", "my-first-model")
    page.get_by_label("Max new tokens", exact=True).fill("60")
    expect(page.get_by_label("Seed (empty = random)", exact=True)).to_have_value("")  # not 0: random
    page.get_by_role("button", name="Generate", exact=True).click()
    output = page.get_by_label("Output", exact=True)
    expect(output).to_have_value(re.compile(r"\S{3}"), timeout=60_000)  # the default prompt is "\n"
    text = settled(output)
    assert not text.startswith("⚠️"), text
    clock.lap(f"generated {len(text)} characters: {text.strip()[:40]!r}")
    no_traceback(page, "Generate")
    shot(page, "Generate")

    # ------------------------------------------------------------------ Compare
    page.get_by_role("tab", name="Compare").click()
    page.get_by_role("button", name="Refresh", exact=True).click()
    row = page.get_by_role("row").filter(has=page.get_by_role("gridcell", name="my-first-model", exact=True))
    expect(row).to_be_visible(timeout=60_000)
    expect(row.get_by_role("gridcell", name="stopped", exact=True)).to_be_visible()
    curves = page.locator(".vega-embed").nth(1)  # after the Train tab's plot
    expect(curves.locator("g[aria-roledescription='legend']")).to_have_attribute(
        "aria-label", re.compile(r"my-first-model \(val\), my-first-model \(train\)"), timeout=15_000)
    expect(curves.locator("g.mark-line path").first).to_have_attribute("d", re.compile(r"\d[L ]+\d"))
    clock.lap("compare table lists the run")
    no_traceback(page, "Compare")
    shot(page, "Compare")

    # ------------------------------------------------------------------ Share
    page.get_by_role("tab", name="Share").click()
    expect(page.get_by_role("button", name="Export (verified transformers folder)")).to_be_visible()
    no_traceback(page, "Share")
    shot(page, "Share")
    clock.lap("all tabs visited")

    assert not JS_ERRORS, f"JavaScript errors on the page: {JS_ERRORS}"
