"""What the learner sees is the truth, in a real browser: the Train preview and the Start button describe the
Build tab's model (a preset edited to 3 layers), and so does Grow's student line; changing a Train field and back
leaves nothing stale; and every tab, filled with a trained run's tables and plots, is readable at 1400×1000 and
on a 1280×800 laptop: no table wider than its box, no header broken inside a word, no axis label like "0.000000".
Screenshots of every tab at both sizes land in tests/artifacts/ (views-<tab>-<width>.png).
"""

from __future__ import annotations

import re
import shutil

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
from browser_util import CHROMIUM, block, browser_page, field, no_traceback, pick, shot, wait_for  # noqa: E402

if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

JS_ERRORS: list[str] = []
SIZES = ((1400, 1000), (1280, 800))
TABS = ("Build", "Train", "Generate", "Compare", "Grow", "Share")

# every visible table: its box (the element around it) must not scroll sideways, its header cells must not wrap
# (a header broken one letter per line), and every plot's axis labels must read as numbers
READABLE_JS = """() => {
  const visible = e => e.offsetParent !== null && !e.closest('[role=tabpanel][hidden]');
  const out = {wide: [], wrapped: [], labels: [], blank: []};
  for (const p of Array.from(document.querySelectorAll('[data-testid=altair]')).filter(visible))  // still drawing
    if (!p.querySelector('svg.marks[width]:not([width="0"])')) out.blank.push(p.closest('[id]')?.id || 'a plot');
  const name = t => (t.innerText || '').trim().slice(0, 60);
  for (const t of Array.from(document.querySelectorAll('table')).filter(visible)) {
    // wider than its box: the box scrolls sideways, or the table runs past the column it sits in
    const column = t.closest('.column, .tabitem, [role=tabpanel]');
    let wide = column && t.getBoundingClientRect().right > column.getBoundingClientRect().right + 1;
    for (let e = t.parentElement; e && e !== column; e = e.parentElement)
      if (e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible') wide = true;
    if (wide) out.wide.push(name(t));
    for (const cell of t.querySelectorAll('th, td')) {  // one word laid out on two lines, or cut at the cell's edge
      const box = cell.getBoundingClientRect();
      const walk = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
      for (let node = walk.nextNode(); node; node = walk.nextNode()) {
        const text = node.textContent.trim();
        if (!text || getComputedStyle(node.parentElement).visibility !== 'visible') continue;  // sizing rows
        const range = document.createRange();
        range.selectNodeContents(node);
        const rects = Array.from(range.getClientRects()).filter(r => r.width > 0);
        const tops = new Set(rects.map(r => Math.round(r.top)));
        if (cell.tagName === 'TH' && !text.includes(' ') && tops.size > 1) out.wrapped.push(text);
        if (rects.some(r => r.right > box.right + 1)) out.wide.push(`${text.slice(0, 40)} (cut at its cell's edge)`);
      }
    }
  }
  for (const svg of Array.from(document.querySelectorAll('.vega-embed svg')).filter(visible))
    for (const t of svg.querySelectorAll('g[aria-roledescription=axis] text')) out.labels.push(t.textContent);
  return out;
}"""


def problems(report: dict) -> list[str]:
    bad = [t for t in report["labels"] if re.fullmatch(r"-?0\.0{4,}", t) or re.match(r"^[!.]\d", t)]
    return report["wide"] + report["wrapped"] + report["blank"] + bad


def readable(page, where: str) -> None:
    """The tab as laid out once its plots have sized themselves to their box (a redraw after the tab shows)."""
    try:
        wait_for(lambda: not problems(page.evaluate(READABLE_JS)), timeout_s=10, what=f"{where} to settle")
    except AssertionError:
        pass  # the report below says what stayed unreadable
    report = page.evaluate(READABLE_JS)
    assert not report["blank"], f"{where}: plots not drawn: {report['blank']}"
    assert not report["wide"], f"{where}: tables wider than their box: {report['wide']}"
    assert not report["wrapped"], f"{where}: headers broken inside a word: {report['wrapped']}"
    bad = problems({**report, "wide": [], "wrapped": [], "blank": []})
    assert not bad, f"{where}: unreadable axis labels: {bad}"


@pytest.fixture(scope="module")
def app(tmp_path_factory, trained_tiny_char, mlflow_uri):
    import os

    from conftest import running_app
    from slm_blocks.ui.state import Limits, SessionStore

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MLFLOW_TRACKING_URI")}
    os.environ.update(OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=mlflow_uri)
    store = SessionStore(Limits(data_dir=tmp_path_factory.mktemp("views"), max_time_s=300))
    try:
        with running_app(store) as (demo, url), browser_page(url, JS_ERRORS) as page:
            yield page, store, trained_tiny_char
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_train_and_grow_describe_the_build_tabs_model(app):
    page, store, _ = app
    estimate = page.locator("#build-estimate")
    expect(estimate).to_contain_text("parameters")
    before = estimate.inner_text()
    pick(page, "Start from a preset", "llama")
    expect(estimate).not_to_have_text(before, timeout=60_000)  # the preset is in place (its editor redrawn) ...
    llama = estimate.inner_text()
    layers = field(block(page, "transformer"), "Layers (repeat)")
    expect(layers).to_have_value("6")
    layers.fill("3")
    layers.press("Tab")
    expect(estimate).not_to_have_text(llama, timeout=60_000)  # ... before its layers are edited
    page.get_by_role("tab", name="Train").click()
    preview, start = page.locator("#train-preview"), page.locator("#train-start")
    expect(preview).to_contain_text("transformer×3", timeout=60_000)
    expect(start).to_contain_text("custom (from llama)")
    count = re.search(r"([\d.]+[KM]) parameters", preview.inner_text()).group(1)
    expect(start).to_have_text(re.compile(rf"Start training · custom \(from llama\) · {re.escape(count)}$"))

    # a Train field changed and changed back: the preview says what the form says now, nothing older
    steps = field(page, "Max steps")
    for value in ("2000", "1000"):
        steps.fill(value)
        steps.press("Tab")
        expect(preview).to_contain_text(f"of {int(value):,}" if value == "2000" else "of 1,000", timeout=60_000)
    expect(preview).not_to_contain_text("2,000")
    expect(page.locator("#train-status")).to_contain_text("Ready")

    page.get_by_role("tab", name="Grow").click()
    page.get_by_label("Distill").check()
    student = page.locator("#grow-student")
    expect(student).to_contain_text("transformer×3")
    page.get_by_role("tab", name="Build").click()  # the student follows the Build tab
    layers = field(block(page, "transformer"), "Layers (repeat)")
    layers.fill("2")
    layers.press("Tab")
    page.get_by_role("tab", name="Grow").click()
    expect(student).to_contain_text("transformer×2")
    page.get_by_role("tab", name="Train").click()
    expect(preview).to_contain_text("transformer×2", timeout=60_000)
    no_traceback(page, "Train")
    assert not JS_ERRORS, JS_ERRORS


def test_every_tab_is_readable_at_1400_and_on_a_laptop(app):
    from slm_blocks.ui.state import SessionRun

    page, store, trained = app
    session = wait_for(lambda: next(iter(store.sessions.values()), None), 30, "the browser's session")
    shutil.copytree(trained.dir, session.root / "runs" / "plays")  # a trained run of this learner's
    session.runs["plays"] = SessionRun("plays", session.root / "runs" / "plays")

    # fill every view a run has: a block's tensors, the preview, the next-token bars and the heads, the Compare
    # table and plots, Grow's before/after table, the model card and the quantize table
    page.get_by_role("tab", name="Build").click()
    page.locator("#build-diagram [data-block]").nth(2).click()
    expect(page.locator("#build-block-detail")).to_contain_text("parameters")
    page.get_by_role("tab", name="Generate").click()
    pick(page, "Model (your runs and imports)", "plays")
    expect(page.locator("#next-bars")).to_contain_text("After the prompt", timeout=60_000)
    page.get_by_text("Attention: every head of a layer", exact=True).click()
    page.get_by_role("button", name="Show attention").click()
    expect(page.locator("#attention-heads")).to_contain_text("head 3", timeout=60_000)
    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#compare-table")).to_contain_text("plays", timeout=60_000)
    page.get_by_role("tab", name="Grow").click()
    pick(page, "Grown run", "plays")
    page.get_by_role("button", name="Before / after").click()
    expect(page.locator("#grow-table")).to_contain_text("plays", timeout=120_000)
    page.get_by_role("tab", name="Share").click()
    pick(page, "Run to export", "plays")
    page.get_by_role("button", name="Export (verified transformers folder)").click()
    expect(page.locator("#export-msg")).to_contain_text("Exported", timeout=180_000)
    page.get_by_text("Model card preview").click()  # (the quantize table with rows: tests/ui/test_deploy.py)

    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        for tab in TABS:
            page.get_by_role("tab", name=tab).click()
            expect(page.get_by_role("tab", name=tab)).to_have_attribute("aria-selected", "true")
            readable(page, f"{tab} at {width}×{height}")
            shot(page, f"views-{tab}-{width}")
    no_traceback(page, "every tab")
    assert not JS_ERRORS, JS_ERRORS
