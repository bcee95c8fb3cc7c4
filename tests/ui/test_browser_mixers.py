"""A researcher's hybrid in a real browser: from the tiny-char preset (attention layers) add a Mamba2 block and a
mixture-of-experts MLP from the block list, see the estimate name the active parameters and the fixed state, train a
few steps, generate, see which experts each prompt token goes to and the memory kept per sequence, and export
(custom code: no native class computes this mix, and the message says why). Screenshots of every tab in
tests/artifacts/.

Drives Debian's chromium through the playwright package; skipped when either is missing. One tiny training on one
thread (the cores are shared).
"""

from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
from browser_util import CHROMIUM, block, browser_page, field, launched_app, no_traceback, pick, shot  # noqa: E402

if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

JS_ERRORS: list[str] = []
RUN = "my-first-model"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with launched_app(tmp_path_factory.mktemp("browser-mixers")) as url, browser_page(url, JS_ERRORS) as pg:
        yield pg


def add(page, btype: str) -> None:
    pick(page, "Block type to add", btype)
    page.get_by_role("button", name="Add block", exact=True).click()
    expect(block(page, btype).locator("strong")).to_be_visible()


def test_hybrid_of_attention_mamba2_and_experts_trains_generates_and_exports(page):
    # ------------------------------------------------------------------ Build: attention + Mamba2 + MoE MLP
    estimate = page.locator("#build-estimate")
    expect(estimate).to_contain_text("parameters", timeout=60_000)
    expect(estimate).not_to_contain_text("active per token")
    add(page, "mamba2")
    expect(estimate).to_contain_text("fixed state/sequence")  # Mamba2 keeps a state, not a KV cache
    add(page, "moe")
    expect(estimate).to_contain_text("active per token")  # top-k of the experts
    diagram = page.locator("#build-diagram")
    for btype in ("transformer", "mamba2", "moe"):
        expect(diagram.locator("[data-block]", has_text=btype).first).to_be_visible()
    expect(page.locator("#build-problems")).to_contain_text("The spec is valid.")
    page.locator("#build-diagram [data-block]", has_text="moe").first.click()
    expect(page.locator("#build-block-detail")).to_contain_text("mlp.experts.0.gate_proj.weight")
    no_traceback(page, "Build")
    shot(page, "Mixers-build")

    # ------------------------------------------------------------------ Train a few steps
    page.get_by_role("tab", name="Train").click()
    for label, value in (("Max steps", "6"), ("Batch size", "4")):
        field(page, label).fill(value)
    page.get_by_text("Advanced", exact=True).click()
    advanced = page.locator("#train-advanced")
    for label, value in (("Eval + sample every (steps)", "3"), ("Log every (steps)", "1"),
                         ("Sample length (tokens)", "16")):
        field(advanced, label).fill(value)
    field(page, "Max steps").press("Tab")
    expect(page.locator("#train-preview")).to_contain_text("tokens per parameter", timeout=60_000)
    page.get_by_role("button", name="Start training").click()
    status = page.locator("#train-status")
    expect(status).to_contain_text("Done", timeout=300_000)
    expect(status).to_contain_text("6/6")
    log = page.locator("#train-log textarea")
    expect(log).to_have_value(re.compile(r"step\s+6 loss"))
    no_traceback(page, "Train")
    shot(page, "Mixers-train")

    # ------------------------------------------------------------------ Generate (the one-token step of each mixer)
    page.get_by_role("tab", name="Generate").click()
    pick(page, "Model (your runs and imports)", RUN)
    prompt = field(page, "Prompt").input_value()
    page.get_by_label("Max new tokens", exact=True).fill("24")
    page.get_by_label("Seed (empty = random)", exact=True).fill("3")
    page.get_by_role("button", name="Generate", exact=True).click()
    output = page.locator("#gen-output textarea")
    expect(output).to_have_value(re.compile("^" + re.escape(prompt) + r"[\s\S]{12}"), timeout=120_000)
    expect(page.locator("#gen-output [data-testid=status-tracker]")).to_have_class(re.compile(r"\bhide\b"),
                                                                                   timeout=60_000)
    assert not output.input_value().startswith("⚠️"), output.input_value()
    page.get_by_text("Experts and memory per token", exact=True).click()
    page.get_by_role("button", name="Show which experts each token goes to").click()
    view = page.locator("#expert-view")
    expect(view).to_contain_text("layers.5", timeout=60_000)  # the moe block: the sixth layer
    expect(view).to_contain_text("state of the Mamba2 / convolution layers")
    expect(view).to_contain_text("KV cache of the attention layers")
    assert view.locator("td").count() >= 2  # one cell per prompt token
    no_traceback(page, "Generate")
    shot(page, "Mixers-generate")

    # ------------------------------------------------------------------ Export: custom code, verified
    page.get_by_role("tab", name="Share").click()
    pick(page, "Run to export", RUN)
    page.get_by_role("button", name="Export (verified transformers folder)").click()
    msg = page.locator("#export-msg")
    expect(msg).to_contain_text("Exported", timeout=300_000)
    expect(msg).to_contain_text("SLMForCausalLM")
    expect(msg).to_contain_text("custom code")
    expect(msg).to_contain_text("identical")  # the greedy continuation in a fresh process
    no_traceback(page, "Share")
    shot(page, "Mixers-share")
    assert not JS_ERRORS, f"JavaScript errors on the page: {JS_ERRORS}"
