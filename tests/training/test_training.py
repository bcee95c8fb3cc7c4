"""The training loop: it learns, resumes exactly, survives NaNs, stops for every documented reason."""

import math
import threading
from pathlib import Path

import pytest
import torch
from conftest import small_spec

import slm_blocks.training.loop as training
from slm_blocks import load_preset
from slm_blocks.training.checkpoint import checkpoint_dirs, latest_checkpoint, load_checkpoint
from slm_blocks.training.data import DataConfig
from slm_blocks.training.run import open_run
from slm_blocks.training.loop import (
    MAX_BAD_STEPS, CheckpointEvent, DoneEvent, EvalEvent, SampleEvent, StepEvent, WarningEvent, lr_at, train,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def run_all(run, stop=None, on_step=None):
    events = []
    for ev in train(run, stop=stop):
        events.append(ev)
        if on_step and isinstance(ev, StepEvent):
            on_step(ev)
    return events


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def done(events) -> DoneEvent:
    assert isinstance(events[-1], DoneEvent), f"the last event is not a DoneEvent: {events[-1]!r}"
    assert len(of(events, DoneEvent)) == 1
    return events[-1]


def weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


# ----------------------------------------------------------------------------- learning


def test_loss_falls_on_tinyshakespeare(make_run, shakespeare):
    run = make_run(spec=load_preset("tiny-char"), data=DataConfig(source="files", paths=[str(shakespeare)]),
                   max_steps=200, batch_size=12, lr=1e-3, warmup_steps=20, log_every=10, eval_every=100,
                   eval_batches=8, sample_tokens=40)
    assert run.spec.vocab_size == len(run.tokenizer) == 68  # 65 characters + 3 special tokens
    events = run_all(run)
    steps, evals = of(events, StepEvent), of(events, EvalEvent)
    assert [s.step for s in steps] == list(range(10, 201, 10))
    assert [e.step for e in evals] == [100, 200]
    first, last = steps[0].loss, steps[-1].loss
    assert first < math.log(68) + 0.5  # sane start (≈ ln 68 before the first updates)
    assert last < 2.8 and last < first - 1.0, (first, last)
    assert evals[-1].val_loss < 2.8, evals[-1]
    assert evals[-1].val_loss < evals[0].val_loss
    assert math.isclose(evals[-1].perplexity, math.exp(evals[-1].val_loss), rel_tol=1e-6)
    assert evals[-1].train_loss == steps[-1].loss
    assert all(math.isfinite(s.grad_norm) and s.tokens_per_s > 0 for s in steps)
    assert steps[-1].tokens_seen == 200 * 12 * 64 and steps[-1].eta_s == 0
    samples = of(events, SampleEvent)
    assert [s.step for s in samples] == [100, 200] and all(isinstance(s.text, str) and s.text for s in samples)
    d = done(events)
    assert d.reason == "max_steps" and d.step == 200 and d.best_val_loss == evals[-1].val_loss
    assert d.checkpoint and latest_checkpoint(run.dir).name == "step-000200"


def test_lr_schedule_warmup_then_cosine(make_run):
    cfg = make_run(max_steps=100, warmup_steps=10, lr=1e-2).train_config
    assert lr_at(0, cfg) == pytest.approx(1e-3)
    assert lr_at(9, cfg) == pytest.approx(1e-2)
    assert lr_at(10, cfg) == pytest.approx(1e-2)
    assert lr_at(100, cfg) == pytest.approx(1e-2 * cfg.min_lr_ratio)
    lrs = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


# ----------------------------------------------------------------------------- exact resume


@pytest.mark.parametrize("dropout,grad_accum", [(0.0, 1), (0.2, 1), (0.0, 2)], ids=["plain", "dropout", "accum"])
def test_resume_is_exact_step_for_step(make_run, dropout, grad_accum):
    common = dict(spec=small_spec(dropout=dropout), max_steps=40, log_every=1, eval_every=20, warmup_steps=5,
                  grad_accum=grad_accum, sample_tokens=8)
    a = run_all(make_run("a", **common))
    losses_a = {s.step: s.loss for s in of(a, StepEvent)}
    assert sorted(losses_a) == list(range(1, 41))

    run_b = make_run("b", **common)
    stop = threading.Event()
    b1 = run_all(run_b, stop=stop, on_step=lambda ev: ev.step == 20 and stop.set())
    d1 = done(b1)
    assert d1.reason == "stopped" and d1.step == 20
    assert latest_checkpoint(run_b.dir).name == "step-000020"
    assert [s.step for s in of(b1, StepEvent)] == list(range(1, 21))

    b2 = run_all(open_run(run_b.dir))
    losses_b = {s.step: s.loss for s in of(b1, StepEvent) + of(b2, StepEvent)}
    assert [s.step for s in of(b2, StepEvent)] == list(range(21, 41))
    for step in range(1, 41):
        assert losses_b[step] == pytest.approx(losses_a[step], abs=1e-6), f"step {step} differs after resume"
    cfg = run_b.train_config
    assert all(s.lr == pytest.approx(lr_at(s.step - 1, cfg)) for s in of(a, StepEvent))  # warmup + cosine
    lrs_a = {s.step: s.lr for s in of(a, StepEvent)}
    assert all(s.lr == lrs_a[s.step] for s in of(b2, StepEvent))
    assert done(b2).reason == "max_steps" and done(b2).step == 40
    # the resumed run's eval at step 40 and its sample match the uninterrupted run
    assert of(b2, EvalEvent)[-1].val_loss == pytest.approx(of(a, EvalEvent)[-1].val_loss, abs=1e-6)
    assert of(b2, SampleEvent)[-1].text == of(a, SampleEvent)[-1].text
    ckpt_a, ckpt_b = Path(a[-1].checkpoint), latest_checkpoint(run_b.dir)
    assert ckpt_a.name == ckpt_b.name == "step-000040"
    wa, wb = weights(ckpt_a), weights(ckpt_b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"final weight {k} differs after resume"
    sa, sb = (load_checkpoint(p, open_run(p.parents[1], load_data=False).new_model())[0] for p in (ckpt_a, ckpt_b))
    assert sa["tokens_seen"] == sb["tokens_seen"] == 40 * 4 * 32 * grad_accum


def test_resume_continues_best_val_and_tokens(make_run):
    run = make_run(max_steps=12, eval_every=4, checkpoint_every=4, keep_checkpoints=5)
    stop = threading.Event()
    first = run_all(run, stop=stop, on_step=lambda ev: ev.step == 8 and stop.set())
    assert done(first).reason == "stopped"
    best = done(first).best_val_loss
    assert best == min(e.val_loss for e in of(first, EvalEvent))
    second = run_all(open_run(run.dir))
    assert of(second, StepEvent)[0].step == 9
    assert of(second, StepEvent)[0].tokens_seen == 9 * 4 * 32
    assert done(second).best_val_loss <= best


# ----------------------------------------------------------------------------- non-finite guard


def nan_at(monkeypatch, bad_calls):
    """Patch lm_loss so the training calls numbered in `bad_calls` (1-based; None = all) give NaN, with NaN grads."""
    real, calls = training.lm_loss, {"n": 0}

    def patched(model, x, y, *parts):
        loss = real(model, x, y, *parts)
        if model.training:
            calls["n"] += 1
            if bad_calls is None or calls["n"] in bad_calls:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(training, "lm_loss", patched)
    return calls


def test_nan_steps_are_skipped_and_training_goes_on(make_run, monkeypatch):
    run = make_run(max_steps=10, eval_every=5)
    nan_at(monkeypatch, {3, 7, 8})
    events = run_all(run)
    warnings = of(events, WarningEvent)
    assert len(warnings) == 3
    assert all("non-finite" in w.message for w in warnings)
    d = done(events)
    assert d.reason == "max_steps" and d.step == 10
    assert [s.step for s in of(events, StepEvent)] == list(range(1, 11))
    assert all(math.isfinite(s.loss) for s in of(events, StepEvent))
    w = weights(latest_checkpoint(run.dir))
    assert all(torch.isfinite(t).all() for t in w.values())
    assert all(math.isfinite(e.val_loss) for e in of(events, EvalEvent))


def test_nan_every_step_stops_with_error_and_keeps_last_good_checkpoint(make_run, monkeypatch):
    run = make_run(max_steps=30, checkpoint_every=5)
    stop = threading.Event()
    good = run_all(run, stop=stop, on_step=lambda ev: ev.step == 6 and stop.set())
    assert done(good).reason == "stopped"
    before = weights(latest_checkpoint(run.dir))
    ckpt_before = latest_checkpoint(run.dir)

    nan_at(monkeypatch, None)
    events = run_all(open_run(run.dir))
    assert len(of(events, WarningEvent)) == MAX_BAD_STEPS
    assert not of(events, StepEvent)
    d = done(events)
    assert d.reason == "error" and d.step == 6 and d.checkpoint is None
    assert "non-finite" in d.message
    ckpt = latest_checkpoint(run.dir)
    assert ckpt == ckpt_before
    model = open_run(run.dir, load_data=False).load_model()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    after = weights(ckpt)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_nan_from_the_first_step_never_writes_a_checkpoint(make_run, monkeypatch):
    run = make_run(max_steps=10)
    nan_at(monkeypatch, None)
    d = done(run_all(run))
    assert d.reason == "error" and d.step == 0
    assert latest_checkpoint(run.dir) is None


# ----------------------------------------------------------------------------- stopping


def test_early_stopping_when_val_loss_stalls(make_run, monkeypatch):
    vals = iter([3.0, 2.5, 2.6, 2.5, 1.0, 1.0])

    def fake_evaluate(model, run, device, precision="fp32"):
        return training.EvalEvent(0, float("nan"), next(vals), 1.0, 1.0, None)

    monkeypatch.setattr(training, "evaluate", fake_evaluate)
    run = make_run(max_steps=100, eval_every=2, early_stop_patience=2)
    events = run_all(run)
    d = done(events)
    assert [e.val_loss for e in of(events, EvalEvent)] == [3.0, 2.5, 2.6, 2.5]
    assert d.reason == "early_stop" and d.step == 8
    assert d.best_val_loss == 2.5
    assert d.checkpoint and latest_checkpoint(run.dir).name == "step-000008"


def test_early_stopping_with_real_evaluation_and_min_delta(make_run):
    run = make_run(max_steps=100, eval_every=3, early_stop_patience=1, early_stop_min_delta=100.0)
    events = run_all(run)
    d = done(events)
    assert d.reason == "early_stop" and d.step == 6
    assert len(of(events, EvalEvent)) == 2
    assert d.best_val_loss == of(events, EvalEvent)[0].val_loss
    assert latest_checkpoint(run.dir).name == "step-000006"


def test_max_time(make_run):
    run = make_run(max_steps=100_000, max_time=1.0)
    events = run_all(run)
    d = done(events)
    assert d.reason == "max_time"
    assert 0 < d.step < 100_000
    assert latest_checkpoint(run.dir).name == f"step-{d.step:06d}"
    assert of(events, StepEvent)[-1].elapsed_s < 5


def test_stop_event_leaves_a_resumable_checkpoint(make_run):
    run = make_run(max_steps=12)
    stop = threading.Event()
    events = run_all(run, stop=stop, on_step=lambda ev: ev.step == 5 and stop.set())
    d = done(events)
    assert d.reason == "stopped" and d.step == 5 and "resume" in d.message
    assert latest_checkpoint(run.dir).name == "step-000005" == Path(d.checkpoint).name
    rest = run_all(open_run(run.dir))
    assert [s.step for s in of(rest, StepEvent)] == list(range(6, 13))
    assert done(rest).reason == "max_steps"


def test_stop_before_the_first_step(make_run):
    run = make_run(max_steps=5)
    stop = threading.Event()
    stop.set()
    d = done(run_all(run, stop=stop))
    assert d.reason == "stopped" and d.step == 0
    assert not of(run_all(open_run(run.dir)), WarningEvent)
    assert latest_checkpoint(run.dir).name == "step-000005"


def test_periodic_checkpoints_and_keep_last(make_run):
    run = make_run(max_steps=10, checkpoint_every=2, keep_checkpoints=2)
    events = run_all(run)
    assert [c.step for c in of(events, CheckpointEvent)] == [2, 4, 6, 8]
    assert [p.name for p in checkpoint_dirs(run.dir)] == ["step-000008", "step-000010"]


# ----------------------------------------------------------------------------- eval metrics


def test_addition_reports_accuracy(make_run):
    run = make_run(data=DataConfig(name="addition", max_chars=24_000), max_steps=4, eval_every=4, eval_batches=2)
    assert run.corpus.eval_examples
    ev = of(run_all(run), EvalEvent)[-1]
    assert isinstance(ev.accuracy, float) and 0.0 <= ev.accuracy <= 1.0


def test_stories_has_no_accuracy_and_bpc_is_consistent(make_run):
    run = make_run(data=DataConfig(max_chars=60_000), max_steps=3, eval_every=3)
    ev = of(run_all(run), EvalEvent)[-1]
    assert ev.accuracy is None
    assert run.tokens_per_char == pytest.approx(1.0)  # char tokenizer: one token per character
    assert ev.bits_per_char > 0
    assert ev.bits_per_char == pytest.approx(ev.val_loss / math.log(2) * run.tokens_per_char, rel=1e-9)


def test_bpc_with_bpe_counts_characters_not_tokens(make_run):
    run = make_run(data=DataConfig(max_chars=60_000), tokenizer="bpe", vocab_size=300, max_steps=3, eval_every=3)
    assert run.tokens_per_char < 0.9  # BPE merges characters
    assert run.tokens_per_char == pytest.approx(len(run.val_tokens) / len(run.corpus.val_text))
    ev = of(run_all(run), EvalEvent)[-1]
    assert ev.bits_per_char > 0
    assert ev.bits_per_char == pytest.approx(ev.val_loss / math.log(2) * run.tokens_per_char, rel=1e-9)


def test_fp16_survives_a_non_finite_step(make_run, monkeypatch):
    """fp16 uses a GradScaler; a skipped non-finite step must still leave the scaler ready for the next one
    (GradScaler refuses a second unscale_() before update())."""
    run = make_run(max_steps=6, precision="fp16")
    nan_at(monkeypatch, {3})
    events = run_all(run)
    assert len(of(events, WarningEvent)) == 1
    assert done(events).reason == "max_steps" and done(events).step == 6
