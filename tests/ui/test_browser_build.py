"""Every field of every block type, and every global, edited through a real browser page as a learner does
(type + Tab for numbers and optional numbers, pick for dropdowns, click for checkboxes); after each edit the
spec JSON on the page must hold the new value. A field that looks editable but ignores input fails here."""

from __future__ import annotations

import json
import math
import typing

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
from browser_util import (CHROMIUM, block, browser_page, field, launched_app, no_traceback, pick, shot,  # noqa: E402
                          spec_in_page, wait_for)

if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

from slm_blocks import BLOCK_TYPES, ModelSpec  # noqa: E402
from slm_blocks.ui.spec_view import GLOBALS, field_label, field_widgets, get_path, moot_fields, set_path  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

JS_ERRORS: list[str] = []


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with launched_app(tmp_path_factory.mktemp("browser-build")) as url, browser_page(url, JS_ERRORS) as pg:
        yield pg


def new_value(hint, meta, current):
    """A different valid-looking value for a field (validity of the whole spec does not matter here)."""
    args = typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint) if type(None) in args else hint
    if typing.get_origin(base) is typing.Literal:
        return next(c for c in typing.get_args(base) if c != current)
    if base is bool:
        return not current
    if base is int:
        hi = meta.get("hi") or 10**6
        return 2 if current is None else (current + 1 if current + 1 <= hi else current - 1)
    if base is float:
        return 500.0 if current is None else (0.1 if current == 0 else current * 2)
    raise AssertionError(f"no widget kind for {hint}")


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def choices_that_hide_fields(btype: str, current: dict) -> dict:
    """{choice field: the value that shows the most fields} for the block's choices that hide some fields."""
    out = {}
    for path, hint, _ in field_widgets(btype):
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if type(None) in args else hint
        if typing.get_origin(base) is not typing.Literal:
            continue
        hidden = {}
        for value in typing.get_args(base):
            trial = json.loads(json.dumps(current))
            set_path(trial, path, value)
            hidden[value] = len(moot_fields(trial))
        if len(set(hidden.values())) > 1:
            out[path] = min(hidden, key=hidden.get)
    return out


def edit(scope, label: str, hint, value) -> str:
    """Change one widget through the page (a choice when `hint` is None); returns the widget kind."""
    if hint is None:
        pick(scope, label, value)
        return "dropdown"
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if typing.get_origin(base) is typing.Literal:
        pick(scope, label, value)
        return "dropdown"
    widget = field(scope, label)
    if base is bool:
        widget.click()
        return "checkbox"
    widget.fill(repr(value) if isinstance(value, float) and value < 1e-3 else str(value))
    widget.press("Tab")  # numbers apply on blur
    return "optional number" if optional else "number"


def test_every_field_of_every_block_edits_the_spec(page):
    page.get_by_text("Spec as JSON").click()
    wait_for(lambda: spec_in_page(page)["blocks"], what="the spec JSON")
    present = {b["type"] for b in spec_in_page(page)["blocks"]}
    for btype in BLOCK_TYPES:  # one block of every type on the page
        if btype not in present:
            pick(page, "Block type to add", btype)
            page.get_by_role("button", name="Add block", exact=True).click()
            wait_for(lambda: btype in [b["type"] for b in spec_in_page(page)["blocks"]], what=f"{btype} added")
    kinds, edited = set(), 0

    def check(where, get, label, hint, meta):
        nonlocal edited
        before = get(spec_in_page(page))
        value = new_value(hint, meta, before)
        kinds.add(edit(where, label, hint, value))
        wait_for(lambda: same(get(spec_in_page(page)), value), what=f"{label!r} to become {value!r} in the spec")
        edited += 1

    hints = typing.get_type_hints(ModelSpec)
    meta = {f: ModelSpec.__dataclass_fields__[f].metadata for f in GLOBALS}
    for name in GLOBALS:
        check(page, lambda s, n=name: s[n], field_label(name), hints[name], meta[name])
    for btype in BLOCK_TYPES:
        def get(s, p, t=btype):
            return get_path(next(b for b in s["blocks"] if b["type"] == t), p)

        # a field that does not apply to the block's other choices is not shown (a RoPE base under learned
        # positions): first the choice that shows the most fields, then every field, the choices last
        controls = choices_that_hide_fields(btype, next(b for b in spec_in_page(page)["blocks"] if b["type"] == btype))
        for path, value in controls.items():
            if get(spec_in_page(page), path) != value:
                edit(block(page, btype), field_label(path), None, value)
                wait_for(lambda p=path, v=value: get(spec_in_page(page), p) == v, 60, f"{path} set to {value}")
        shown = next(b for b in spec_in_page(page)["blocks"] if b["type"] == btype)
        for path, _, _ in field_widgets(btype):  # the block was redrawn with every field that now applies
            if path not in moot_fields(shown):
                expect(field(block(page, btype), field_label(path)).or_(
                    block(page, btype).get_by_text(field_label(path), exact=True)).first).to_be_visible()
        ordered = sorted(field_widgets(btype), key=lambda f: f[0] in controls)
        for path, hint, fmeta in ordered:
            check(block(page, btype), lambda s, p=path: get(s, p), field_label(path), hint, fmeta)
    assert kinds == {"number", "optional number", "dropdown", "checkbox"}, kinds
    assert edited == len(GLOBALS) + sum(len(field_widgets(t)) for t in BLOCK_TYPES)
    no_traceback(page, "Build")
    shot(page, "build-all-fields")
    assert not JS_ERRORS, JS_ERRORS


def test_no_field_is_disabled_or_cut_off(page):
    """Every input of the Build tab accepts input, and no label is wider than its box (cut off)."""
    report = wait_for(lambda: page.evaluate("""() => Array.from(document.querySelectorAll('input, textarea'))
        .filter(e => e.offsetParent !== null && !e.closest('[role=tabpanel][hidden]'))
        .map(e => { const l = e.closest('label') || e.closest('.block');
                    const s = l && l.querySelector('[data-testid=block-info], span');
                    return {disabled: e.disabled, label: s ? s.textContent : '',
                            cut: s ? s.scrollWidth > s.clientWidth + 1 : false}; })"""), 30, "the Build tab's inputs")
    assert not [r for r in report if r["disabled"]], [r["label"] for r in report if r["disabled"]]
    assert not [r for r in report if r["cut"]], [r["label"] for r in report if r["cut"]]



def test_stale_estimate_failing_block_block_detail_and_undo(page):
    """A fresh page: click a diagram block for its tensors; break the spec (the estimate stays, marked stale; the
    diagram marks the block; no "null" anywhere); Remove and a preset switch are undone with Undo."""
    from slm_blocks import load_preset
    from slm_blocks.model.estimate import block_costs

    page.reload()  # a new session with the tiny-char preset
    estimate, problems = page.locator("#build-estimate"), page.locator("#build-problems")
    expect(estimate).to_contain_text("810K parameters", timeout=60_000)
    expect(estimate).to_contain_text("vocabulary 65 tokens")  # which vocabulary the count assumes
    expect(estimate).to_contain_text("Train")
    page.locator("#build-diagram [data-block]").nth(2).click()
    detail = page.locator("#build-block-detail")
    layer = block_costs(load_preset("tiny-char"))[2]
    expect(detail).to_contain_text(f"2 · transformer: {layer.params:,} parameters")
    expect(detail).to_contain_text("model.layers.0.self_attn.q_proj.weight")
    expect(detail).to_contain_text("(B, 4, T, T)")  # the attention scores of 4 heads

    heads = field(block(page, "transformer"), "Heads")
    heads.fill("5")
    heads.press("Tab")
    expect(problems).to_contain_text("Heads: d_model 128 is not divisible by n_heads 5")
    # under the block too, updated in place (the block list is not redrawn for a field edit)
    expect(block(page, "transformer")).to_contain_text("d_model 128 is not divisible by n_heads 5")
    expect(heads).to_have_value("5")
    expect(estimate).to_contain_text("Stale")
    expect(estimate).to_contain_text("810K parameters")  # the last valid figures stay
    expect(page.locator("#build-diagram .has-problem")).to_have_count(1)
    expect(page.locator("#build-diagram .has-problem")).to_contain_text("2 · transformer")
    heads.fill("")
    heads.press("Tab")
    expect(problems).to_contain_text("Heads: is empty; it must be a whole number")
    assert "null" not in page.evaluate("document.body.innerText")
    heads.fill("4")
    heads.press("Tab")
    expect(problems).to_contain_text("The spec is valid.")
    expect(block(page, "transformer")).not_to_contain_text("⚠️")
    expect(page.locator("#build-diagram .has-problem")).to_have_count(0)
    shot(page, "build-block-detail")

    undo = page.locator("#build-undo")
    expect(undo).to_be_hidden()
    # a redraw of the block list takes several round trips: seconds when the load test shares the cores
    block(page, "final_norm").get_by_role("button", name="Remove").click()
    expect(block(page, "final_norm")).to_have_count(0, timeout=30_000)
    expect(undo).to_have_text("↶ Undo remove 3 · final_norm", timeout=30_000)
    undo.click()
    expect(block(page, "final_norm")).to_have_count(1, timeout=30_000)
    expect(undo).to_be_hidden(timeout=30_000)

    pick(page, "Start from a preset", "llama")
    expect(estimate).to_contain_text("5.21M parameters", timeout=30_000)
    expect(undo).to_have_text("↶ Undo: back to the blocks before llama", timeout=30_000)
    undo.click()
    expect(estimate).to_contain_text("810K parameters", timeout=30_000)
    expect(field(page, "Start from a preset")).to_have_value("tiny-char")
    no_traceback(page, "Build")
    assert not JS_ERRORS, JS_ERRORS
