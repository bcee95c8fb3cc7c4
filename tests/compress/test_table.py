"""The size-speed-quality table on a trained model: every variant measured, ratios against fp32."""

import pytest

from slm_blocks.compress.table import VARIANTS, compare_variants, table_markdown, table_rows


@pytest.fixture(scope="module")
def rows(trained_tiny_char):
    import torch

    torch.set_num_threads(1)
    run = trained_tiny_char
    return compare_variants(run.load_model(), run.tokenizer, run.val_tokens, run.tokens_per_char, prompt="ROMEO:\n",
                            n_tokens=24, repeats=1, windows=8)


def test_every_variant_is_measured(rows):
    by = {r.variant: r for r in rows}
    assert list(by) == list(VARIANTS)
    for name in ("fp32", "bf16", "int8", "int4"):
        r = by[name]
        assert r.size_bytes and r.tokens_per_s and r.loss and r.bits_per_char and r.greedy, r
    g = by["gguf-q8_0"]
    assert g.size_bytes and g.loss and g.greedy and "q8_0 weights" in g.note
    fp32 = by["fp32"]
    assert by["bf16"].size_bytes < 0.55 * fp32.size_bytes
    assert by["int8"].size_bytes < 0.35 * fp32.size_bytes and g.size_bytes < 0.35 * fp32.size_bytes
    for name in ("bf16", "int8", "gguf-q8_0"):
        assert abs(by[name].loss / fp32.loss - 1) < 0.01, (name, by[name].loss, fp32.loss)
    assert by["int8"].bits_per_char == pytest.approx(by["int8"].loss / 0.6931471805599453 * 1.0, rel=1e-6)


def test_table_shows_ratios_and_text(rows):
    shown = table_rows(rows)
    assert shown[0]["file"].endswith("(1.00×)") and "(+0.00%)" in shown[0]["held-out loss"]
    md = table_markdown(rows)
    for name in VARIANTS:
        assert f"| {name} |" in md
    assert md.count("\n|") >= 6
