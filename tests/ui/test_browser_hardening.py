"""The hardened app in a real browser (chromium): the request guard in front of Gradio lets everything a learner
does through (uploads of a model folder, events, the heartbeat), and the caps answer in words on the page.

Import the app's own export on the Share tab, generate from it, look at next-token probabilities and an attention
map, and ask for a head the model does not have: a message naming the field, no traceback.
"""

from __future__ import annotations

import re

import pytest

from browser_util import CHROMIUM, browser_page, field, launched_app, no_traceback, pick, shot, wait_for

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture
def model_files(tmp_path):
    import torch

    from slm_blocks import ModelSpec, build_model
    from slm_blocks.sharing.export import export_hf
    from slm_blocks.training.tokenization import build_tokenizer

    tok = build_tokenizer("byte")
    spec = ModelSpec.from_dict({"vocab_size": len(tok), "d_model": 32, "max_seq_len": 64, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": "rope"},
        {"type": "transformer", "repeat": 2, "attention": {"n_heads": 2}, "mlp": {"activation": "silu", "gated": True},
         "norm": {"kind": "rmsnorm"}}, {"type": "final_norm", "norm": {"kind": "rmsnorm"}}, {"type": "lm_head"}]})
    torch.manual_seed(0)
    out = tmp_path / "export"
    export_hf(build_model(spec), tok, out, verify=False)
    return sorted(str(p) for p in out.iterdir() if p.is_file())


def test_import_generate_and_inspect_through_the_guard(tmp_path, model_files):
    errors: list = []
    with launched_app(tmp_path / "app") as url, browser_page(url, errors) as page:
        page.get_by_role("tab", name="Share").click()
        page.locator("#import-files input[type=file]").set_input_files(model_files)  # one upload request, every file
        page.get_by_role("button", name="Import", exact=True).click()
        wait_for(lambda: "Imported as" in page.evaluate("document.body.textContent"), 60, "the import")
        shot(page, "hardening-1-imported")

        page.get_by_role("tab", name="Generate").click()
        pick(page, "Model (your runs and imports)", "imported")
        field(page, "Prompt").fill("Once upon")
        page.get_by_role("button", name="Generate", exact=True).click()
        output = field(page, "Output")
        wait_for(lambda: output.input_value().startswith("Once upon") and len(output.input_value()) > 9, 60,
                 "generated text")
        # the next-token bars follow the prompt; a click on one appends its token
        bars = page.locator("#next-bars")
        wait_for(lambda: "After the prompt" in bars.inner_text() and "Once␣upon" in bars.inner_text(), 60,
                 "the next-token bars")
        before = field(page, "Prompt").input_value()
        bars.locator("[data-token]").first.click()
        wait_for(lambda: len(field(page, "Prompt").input_value()) > len(before), 30, "the clicked token appended")
        page.get_by_text("As a table (the /next_tokens API)").click()
        page.get_by_role("button", name="Show next-token probabilities for the prompt").click()
        wait_for(lambda: page.locator("table").filter(has_text="probability").count() > 0, 30, "the table")
        page.get_by_text("Attention: every head of a layer", exact=True).click()
        page.get_by_role("button", name="Show attention").click()
        heads = page.locator("#attention-heads")
        wait_for(lambda: "head 0" in heads.inner_text() and "head 1" in heads.inner_text(), 60, "the heads")
        layer = field(page, "Attention layer")
        layer.fill("99")
        layer.press("Enter")
        page.get_by_role("button", name="Show attention").click()
        wait_for(lambda: re.search(r"Layer: choose 0…1", heads.inner_text()), 30, "the layer message")
        shot(page, "hardening-2-generate")
        no_traceback(page, "Generate tab")
    assert not errors, errors
