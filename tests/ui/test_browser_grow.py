"""The Grow tab in a real browser, as a learner uses it: the explanation follows the technique, a trained run of
the session is the source, Prune + heal runs and fills the before/after table, a bad option gets a message
naming it, and the Train tab's "Start from" offers the run. Screenshots in tests/artifacts/.

The session gets its trained run by copying the shared trained_tiny_char fixture into its folder (training one
in the browser is the Train tab's test); the healing is a few steps in one worker on one thread.
"""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
from browser_util import CHROMIUM, browser_page, field, no_traceback, pick, shot, wait_for  # noqa: E402

if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

JS_ERRORS: list[str] = []


def test_grow_tab_prune_and_heal_in_a_browser(tmp_path, trained_tiny_char, mlflow_uri, monkeypatch):
    from conftest import running_app
    from slm_blocks.ui.state import Limits, SessionRun, SessionStore

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    store = SessionStore(Limits(data_dir=tmp_path / "data", max_time_s=300))
    with running_app(store) as (demo, url), browser_page(url, JS_ERRORS) as page:
        page.get_by_role("tab", name="Grow").click()
        explain = page.locator("#grow-explain")
        expect(explain).to_contain_text("Fine-tune")
        # opening a tab refreshes its run pickers; the browser's session now exists on the server
        session = wait_for(lambda: next(iter(store.sessions.values()), None), 15, "the browser's session")
        shutil.copytree(trained_tiny_char.dir, session.root / "runs" / "shakespeare")
        session.runs["shakespeare"] = SessionRun("shakespeare", session.root / "runs" / "shakespeare")
        page.get_by_role("tab", name="Build").click()  # as if trained meanwhile: the Grow tab, opened again,
        page.get_by_role("tab", name="Grow").click()  # lists it
        pick(page, "Source / teacher (a finished run, or a Hub id)", "shakespeare")

        page.get_by_label("Distill").check()
        expect(explain).to_contain_text("T²·KL")
        expect(page.locator("#grow-student")).to_contain_text("Student")
        page.get_by_label("Prune + heal").check()
        expect(explain).to_contain_text("Minitron")
        shot(page, "Grow-prune-form")

        # a bad option first: a message naming it, and no run
        page.get_by_text("Or choose exactly what to cut").click()
        drop = field(page, "Drop layers")
        drop.fill("9")
        drop.press("Tab")  # as a learner leaves the field; on a loaded CI machine one run sent the old 0
        expect(drop).to_have_value("9")
        page.get_by_role("button", name="Grow", exact=True).click()
        status = page.locator("#grow-status")
        expect(status).to_contain_text("drop_layers", timeout=30_000)
        expect(status).to_contain_text("at least one")
        assert list(session.runs) == ["shakespeare"]
        for label, value in (("Drop layers", "0"), ("Steps", "2"), ("New run name", "small")):
            box = field(page, label)
            box.fill(value)
            box.press("Tab")
            expect(box).to_have_value(value)
        page.get_by_role("button", name="Grow", exact=True).click()
        expect(status).to_contain_text("Done", timeout=180_000)
        expect(status).to_contain_text("Pruned")  # what pruning removed, and its price before healing
        expect(status).to_contain_text("before healing")
        table = page.locator("#grow-table")
        expect(table).to_contain_text("pruned, before healing", timeout=60_000)
        expect(table).to_contain_text("small after 2 steps")
        expect(table).to_contain_text("teacher: shakespeare")
        no_traceback(page, "Grow")
        shot(page, "Grow-pruned")

        page.get_by_role("tab", name="Train").click()
        pick(page, "Start from", "small")
        expect(page.locator("#train-start-from")).to_contain_text("architecture and tokenizer")
        shot(page, "Train-start-from")
    assert not JS_ERRORS, f"JavaScript errors on the page: {JS_ERRORS}"
