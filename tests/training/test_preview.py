"""The preview shown before Start: the model with the vocabulary the tokenizer really gives, tokens per parameter,
an ETA; the expensive part cached per (data, tokenizer) choice."""

import time

import pytest

from slm_blocks import estimate, load_preset
from slm_blocks.training.job import Job
from slm_blocks.training.preview import CHINCHILLA_TOKENS_PER_PARAM, architecture, data_key, preview_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gpt2_preset_with_char_on_stories_is_smaller_than_the_build_tab_says():
    job = Job.from_dict({"spec": "gpt2", "data": {"source": "builtin", "name": "stories"},
                         "tokenizer": {"kind": "char"}, "train": {"max_steps": 1000, "batch_size": 12}})
    cache = {}
    p = preview_run(job, cache)
    assert estimate(load_preset("gpt2")).params == p.spec_params
    assert f"{p.spec_params / 1e6:.2f}M" == "5.85M" and f"{p.params / 1e6:.2f}M" == "4.82M"
    assert p.vocab_size < 100 and p.data.name == "builtin:stories" and p.data.train_tokens > 1_000_000
    assert p.tokens_per_step == 12 * 256 and p.steps == 1000 and p.tokens == 1000 * 12 * 256
    assert p.tokens_per_param == pytest.approx(p.tokens / p.params)
    assert p.eta_s > 0 and p.ends_by == "steps"
    assert "4 × transformer" in p.summary or "transformer" in p.summary
    assert CHINCHILLA_TOKENS_PER_PARAM == 20
    # cached per (data, tokenizer): a new step count or batch size reuses it, another tokenizer does not
    t0 = time.perf_counter()
    job.train.max_steps, job.train.batch_size = 50, 4
    p2 = preview_run(job, cache)
    assert time.perf_counter() - t0 < 0.5 and p2.data == p.data and p2.tokens == 50 * 4 * 256
    assert len(cache) == 1
    job.tokenizer.kind = "byte"
    assert preview_run(job, cache).vocab_size == 259 and len(cache) == 2


def test_a_time_budget_shortens_the_planned_run():
    job = Job.from_dict({"spec": "tiny-char", "data": {"source": "builtin", "name": "addition", "max_chars": 24000},
                         "train": {"max_steps": 10**6, "max_time": 30}})
    p = preview_run(job, flops_per_s=1e9)
    assert p.ends_by == "time" and p.eta_s == 30 and p.steps < 10**6


def test_data_key_changes_with_the_file(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello world\n" * 100)
    job = Job.from_dict({"data": {"source": "files", "paths": [str(f)]}})
    k1 = data_key(job)
    f.write_text("other text entirely\n" * 100)
    assert data_key(job) != k1


def test_architecture_names_every_block():
    text = architecture(load_preset("llama"))
    for part in ("embedding", "rope", "transformer", "heads", "silu", "final_norm", "lm_head"):
        assert part in text, (part, text)
