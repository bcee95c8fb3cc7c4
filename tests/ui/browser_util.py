"""Shared pieces of the real-browser tests: Debian's chromium driven by the playwright package (never
`playwright install`), the app launched in-process, and helpers that act on Gradio widgets as a user does."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")) if p
                 and Path(p).is_file()), None)
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PARAMS = re.compile(r"([\d.]+\s*[KMGT]?) parameters")

try:  # an expect() without its own timeout: 20 s, not playwright's 5 s (a redraw or an event can take seconds
    from playwright.sync_api import expect  # when the load test shares the two cores with a browser test)

    expect.set_options(timeout=20_000)
except ImportError:  # the browser test modules skip themselves then
    pass


@contextmanager
def launched_app(data_dir: Path):
    """The app in this process on a free port, its worker processes on one thread each (the cores are shared)."""
    from slm_blocks.ui import build_app
    from slm_blocks.ui.state import Limits, SessionStore

    omp = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    demo = build_app(SessionStore(Limits(data_dir=data_dir))).queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=None, quiet=True)
    try:
        yield url
    finally:
        demo.close()
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


@contextmanager
def browser_page(url: str, errors: list):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # a page that is not in front keeps running its timers and animation frames: the tests open a second
        # learner's page, and chromium otherwise pauses the hidden one (clicks there wait forever)
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        try:
            yield page
        finally:
            browser.close()


def field(scope, label: str):
    """The input of a Gradio widget by its label. A textbox's accessible name is its label plus its info line,
    so an exact get_by_label misses textboxes that have help text: those are found by their label span."""
    page = getattr(scope, "page", scope)
    span = page.locator("[data-testid=block-info]", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))
    return scope.get_by_label(label, exact=True).or_(
        scope.locator("label").filter(has=span).locator("textarea, input[type=number]"))


def pick(scope, label: str, option: str) -> None:
    """Choose an option of a Gradio dropdown (a custom listbox: click the input, then the option)."""
    field(scope, label).click()
    page = getattr(scope, "page", scope)  # a Locator knows its page; a Page is its own
    page.get_by_role("option", name=option, exact=True).click()


def block(page, btype: str):
    """The editor group of the (single) block of this type."""
    title = page.locator("strong", has_text=re.compile(rf"^\d+ · {btype}$"))
    return page.locator(".gr-group:not(:has(.gr-group))", has=title)  # Gradio nests a group in a group


def spec_in_page(page) -> dict:
    """The spec as the page shows it in the JSON editor (the accordion must be open): CodeMirror renders only
    the visible lines, so read its document, not the DOM text."""
    text = page.evaluate("""() => {
        const c = document.querySelector('.cm-content');
        const view = c && ((c.cmTile && c.cmTile.view) || (c.cmView && c.cmView.view));
        return view ? view.state.doc.toString() : null; }""")
    assert text is not None, "the spec JSON editor is not on the page"
    return json.loads(text)


def wait_for(predicate, timeout_s: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (AssertionError, ValueError, KeyError, IndexError, TypeError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def no_traceback(page, where: str) -> None:
    text = page.evaluate("document.body.textContent")
    assert "Traceback" not in text, f"a traceback is shown on the page ({where})"


def shot(page, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(300)  # let plots and transitions settle
    path = ARTIFACTS / f"{name.lower()}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
