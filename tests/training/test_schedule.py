"""Learning-rate schedules: over steps, over a time budget (ends annealed however fast the machine is), resumed
exactly (elapsed time is checkpointed), and continued smoothly when a resume adds steps, again and again."""

import math
import threading
import types

import pytest

import slm_blocks.training.loop as training
from slm_blocks.training.config import TrainConfig
from slm_blocks.training.driver import drive
from slm_blocks.training.events import DoneEvent, ErrorEvent, StepEvent
from slm_blocks.training.run import open_run
from slm_blocks.training.schedule import Segment, continue_with_more_steps, lr_at, progress

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- pure functions


def test_progress_is_the_larger_of_steps_and_time():
    cfg = TrainConfig(max_steps=1000, max_time=60)
    assert progress(100, 0.0, cfg) == pytest.approx(0.1)
    assert progress(100, 30.0, cfg) == pytest.approx(0.5)
    assert progress(900, 30.0, cfg) == pytest.approx(0.9)
    assert progress(10, 120.0, cfg) == 1.0
    assert progress(100, 59.0, TrainConfig(max_steps=1000)) == pytest.approx(0.1)  # no budget: steps only


@pytest.mark.parametrize("decay,tol", [("cosine", 1e-3), ("linear", 2e-2)])
def test_time_budget_schedule_ends_annealed_at_min_lr(decay, tol):
    cfg = TrainConfig(max_steps=10**6, max_time=30, lr=1e-3, min_lr_ratio=0.1, warmup_steps=1000, decay=decay)
    low = cfg.lr * cfg.min_lr_ratio
    lrs = [lr_at(step, cfg, elapsed=t) for step, t in ((s, s * 0.01) for s in range(0, 3000, 7))]
    assert lrs[-1] == pytest.approx(low, rel=tol)  # 29.99 s of 30: annealed, though only 3000 of 10^6 steps ran
    peak_at = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(cfg.lr, rel=0.02)
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:peak_at], lrs[1:peak_at + 1]))  # warmup rises
    assert all(a >= b - 1e-12 for a, b in zip(lrs[peak_at:], lrs[peak_at + 1:]))  # then decays
    assert lr_at(10, cfg, elapsed=30.0) == pytest.approx(low)


def test_step_schedule_is_unchanged():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1e-2, decay="cosine")
    assert [lr_at(s, cfg) for s in (0, 9, 10, 100)] == pytest.approx([1e-3, 1e-2, 1e-2, 1e-3])
    assert lr_at(55, cfg) == pytest.approx(1e-3 + (1e-2 - 1e-3) * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_linear_decay_is_a_straight_line_from_the_peak_to_the_minimum():
    cfg = TrainConfig(max_steps=110, warmup_steps=10, lr=1e-2, decay="linear")
    assert [lr_at(s, cfg) for s in (0, 9, 10, 110)] == pytest.approx([1e-3, 1e-2, 1e-2, 1e-3])
    assert lr_at(60, cfg) == pytest.approx(1e-3 + (1e-2 - 1e-3) * 0.5)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a - b == pytest.approx(lrs[0] - lrs[1]) for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("resume_step", [5, 40, 100], ids=["in-warmup", "mid-decay", "finished"])
def test_more_steps_continue_the_curve(resume_step):
    old = TrainConfig(max_steps=100, warmup_steps=10, lr=1e-2, min_lr_ratio=0.1)
    new = TrainConfig(**{**old.to_dict(), "max_steps": 150})
    seg = continue_with_more_steps(resume_step, 0.0, old, Segment(), 150)
    before = lr_at(resume_step, old)
    lrs = [lr_at(s, new, 0.0, seg) for s in range(resume_step, 151)]
    assert lrs[0] == pytest.approx(before)  # no jump at the resume step
    assert lrs[-1] == pytest.approx(old.lr * old.min_lr_ratio)
    steps = list(zip(lrs, lrs[1:]))
    assert max(abs(a - b) for a, b in steps) < 0.1 * old.lr  # smooth: no step changes the lr by a tenth of the peak
    if resume_step >= 10:
        assert all(a >= b - 1e-15 for a, b in steps)  # past warmup: never back up
    else:
        assert max(lrs) == pytest.approx(old.lr)  # still warming up: the warmup finishes, then it decays


def test_a_second_extension_continues_from_the_first():
    a = TrainConfig(max_steps=100, warmup_steps=10, lr=1e-2)
    b = TrainConfig(**{**a.to_dict(), "max_steps": 150})
    seg1 = continue_with_more_steps(60, 0.0, a, Segment(), 150)
    c = TrainConfig(**{**a.to_dict(), "max_steps": 200})
    seg2 = continue_with_more_steps(120, 0.0, b, seg1, 200)
    assert lr_at(120, c, 0.0, seg2) == pytest.approx(lr_at(120, b, 0.0, seg1))
    assert lr_at(200, c, 0.0, seg2) == pytest.approx(a.lr * a.min_lr_ratio)
    assert Segment.from_dict(seg2.to_dict()) == seg2


# ----------------------------------------------------------------------------- the loop


class Clock:
    """A stand-in for time.perf_counter that moves only when the test says (`tick` seconds per step)."""

    def __init__(self, t0: float = 1000.0, tick: float = 0.1):
        self.t, self.tick = t0, tick

    def perf_counter(self) -> float:
        return self.t


def run_with_clock(monkeypatch, run, clock, stop_at=None, stop=None):
    monkeypatch.setattr(training, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    stop = stop or threading.Event()
    events = []
    for ev in training.train(run, stop=stop):
        events.append(ev)
        if isinstance(ev, StepEvent):
            clock.t += clock.tick
            if stop_at is not None and ev.step == stop_at:
                stop.set()
    return events


def steps_of(events):
    return {e.step: e for e in events if isinstance(e, StepEvent)}


def test_a_time_budgeted_run_ends_annealed(make_run, monkeypatch):
    run = make_run("budget", max_steps=100_000, max_time=2.0, warmup_steps=3, log_every=1, eval_every=None,
                   decay="cosine")  # flat at the end: the last step's lr is the minimum within 1%
    events = run_with_clock(monkeypatch, run, Clock(tick=2**-5))  # 64 steps fit the budget (exact in binary)
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.reason == "max_time" and done.step == 64
    last = steps_of(events)[64]
    cfg = run.train_config
    assert last.lr == pytest.approx(cfg.peak_lr() * cfg.min_lr_ratio, rel=0.01)  # annealed at the end of the budget
    assert last.elapsed_s == pytest.approx(2.0 - 2**-5)  # the clock moves after each step is reported
    assert max(e.lr for e in steps_of(events).values()) == pytest.approx(cfg.peak_lr(), rel=0.05)
    # evals left empty follow the budget too: an early one at budget/20 (0.1 s), then at every 0.2 s, the last
    # one at the end
    evals = [e.step for e in events if type(e).__name__ == "EvalEvent"]
    assert len(evals) == 11 and evals[0] == 5 and evals[-1] == 64, evals


def test_real_clock_time_budget_ends_near_min_lr(make_run):
    """On the real clock the schedule follows the elapsed time: the last step's learning rate is the schedule's
    value somewhere within that step (whatever a busy machine made the step cost), far down from the peak."""
    run = make_run("real", max_steps=100_000, max_time=1.5, log_every=1)
    events = list(training.train(run))
    assert events[-1].reason == "max_time"
    steps = [e for e in events if isinstance(e, StepEvent)]
    prev, last = steps[-2], steps[-1]
    cfg = run.train_config
    assert lr_at(last.step - 1, cfg, last.elapsed_s) <= last.lr <= lr_at(last.step - 1, cfg, prev.elapsed_s)
    assert last.lr < cfg.peak_lr() / 2


def test_resume_of_a_time_budgeted_run_continues_the_schedule_exactly(make_run, monkeypatch):
    common = dict(max_steps=100_000, max_time=2.0, warmup_steps=3, log_every=1, eval_every=None)
    a = steps_of(run_with_clock(monkeypatch, make_run("a", **common), Clock()))
    run_b = make_run("b", **common)
    first = run_with_clock(monkeypatch, run_b, Clock(), stop_at=8)
    assert first[-1].reason == "stopped" and first[-1].step == 8
    rest = run_with_clock(monkeypatch, open_run(run_b.dir), Clock(t0=5.0))  # another process, another clock
    b = {**steps_of(first), **steps_of(rest)}
    assert sorted(b) == sorted(a) == list(range(1, 21))
    for step in a:
        # the same schedule (up to the last bits of the clock's float arithmetic) and the same training
        assert b[step].lr == pytest.approx(a[step].lr, rel=1e-12), f"lr differs at step {step} after the resume"
        assert b[step].loss == pytest.approx(a[step].loss, abs=1e-6)
        assert b[step].elapsed_s == pytest.approx(a[step].elapsed_s)


# ----------------------------------------------------------------------------- resume with extra steps (driver)


def drive_collect(job, run_dir, stop_at=None, **kw):
    stop, events = threading.Event(), []

    def emit(ev):
        events.append(ev)
        if isinstance(ev, StepEvent) and ev.step == stop_at:
            stop.set()

    code = drive(job, run_dir, emit=emit, stop=stop, track=False, **kw)
    errors = [e.message for e in events if isinstance(e, ErrorEvent)]
    assert not errors, errors
    return code, events


def small_job(max_steps):
    from conftest import small_spec

    from slm_blocks.training.job import Job

    return Job.from_dict({"spec": small_spec().to_dict(), "data": {"source": "builtin", "max_chars": 60_000},
                          "train": {"max_steps": max_steps, "batch_size": 4, "warmup_steps": 4, "log_every": 1,
                                    "eval_every": 0, "sample_tokens": 0, "checkpoint_every": 0, "device": "cpu",
                                    "precision": "fp32", "seed": 3}})


def test_extra_steps_continue_the_lr_and_stay_exact_under_a_second_resume(tmp_path):
    # A: 20 steps, stopped at 12, resumed with 10 extra steps (total 30), uninterrupted to the end
    _, a1 = drive_collect(small_job(20), tmp_path / "a", stop_at=12)
    code, a2 = drive_collect(None, tmp_path / "a", resume=True, extra_steps=10)
    assert code == 0 and a2[-1].reason == "max_steps" and a2[-1].step == 30
    a = {**steps_of(a1), **steps_of(a2)}
    assert sorted(a) == list(range(1, 31))
    old_cfg = TrainConfig(**{**small_job(20).train.to_dict()})
    assert a[13].lr == pytest.approx(lr_at(12, old_cfg))  # the first resumed step: no jump from the old curve
    lrs = [a[s].lr for s in range(12, 31)]
    assert all(x >= y - 1e-15 for x, y in zip(lrs, lrs[1:]))  # decays from there, never back up
    record = open_run(tmp_path / "a", load_data=False)
    assert record.train_config.max_steps == 30 and record.meta["schedule"]["start_step"] == 12
    seg = Segment.from_dict(record.meta["schedule"])
    for s in range(13, 31):  # a StepEvent reports the lr of the update it made, lr_at(step - 1)
        assert a[s].lr == pytest.approx(lr_at(s - 1, record.train_config, 0.0, seg))
    assert lr_at(30, record.train_config, 0.0, seg) == pytest.approx(old_cfg.peak_lr() * old_cfg.min_lr_ratio)

    # B: the same, but the extended run is stopped again at 20 and resumed plainly: step for step the same as A
    drive_collect(small_job(20), tmp_path / "b", stop_at=12)
    _, b2 = drive_collect(None, tmp_path / "b", resume=True, extra_steps=10, stop_at=20)
    _, b3 = drive_collect(None, tmp_path / "b", resume=True)
    b = {**steps_of(a1), **steps_of(b2), **steps_of(b3)}
    assert sorted(b) == list(range(1, 31))
    for step in range(13, 31):
        assert b[step].lr == a[step].lr, f"lr differs at step {step} after a second resume"
        assert b[step].loss == pytest.approx(a[step].loss, abs=1e-6)

    # C: a second extension continues from the first one's curve, again without a jump
    drive_collect(small_job(20), tmp_path / "c", stop_at=12)
    drive_collect(None, tmp_path / "c", resume=True, extra_steps=10, stop_at=20)
    _, c3 = drive_collect(None, tmp_path / "c", resume=True, extra_steps=5)
    c = steps_of(c3)
    assert sorted(c) == list(range(21, 36))
    assert c[21].lr == pytest.approx(a[21].lr)  # what the first extension gave at that step
    lrs = [c[s].lr for s in range(21, 36)]
    assert all(x > y for x, y in zip(lrs, lrs[1:])) and lrs[-1] < a[30].lr


def test_a_run_saved_before_the_optimizer_settings_reopens_as_it_trained(tmp_path):
    """run.json of a run trained before `optimizer` and `decay` existed: AdamW with cosine decay, not the new
    defaults (its checkpoint holds AdamW moments, and its lr curve was cosine)."""
    import json

    drive_collect(small_job(4), tmp_path / "old")
    path = tmp_path / "old" / "run.json"
    record = json.loads(path.read_text())
    for key in ("optimizer", "decay", "muon_momentum"):
        record["train"].pop(key)
    path.write_text(json.dumps(record))
    cfg = open_run(tmp_path / "old", load_data=False).train_config
    assert (cfg.optimizer, cfg.decay) == ("adamw", "cosine")
    assert TrainConfig().optimizer == "muon" and TrainConfig().decay == "linear"  # new runs keep the new defaults


def test_an_empty_learning_rate_is_each_optimizers_own_best():
    """AdamW at Muon's peak (1.6e-2) spiked in its first steps: left empty, each optimizer gets its own."""
    from slm_blocks.training.config import LR_DEFAULT
    from slm_blocks.training.optim import make_optimizer
    from torch import nn

    assert TrainConfig().peak_lr() == LR_DEFAULT["muon"] == 1.6e-2
    assert TrainConfig(optimizer="adamw").peak_lr() == LR_DEFAULT["adamw"] == 3e-3
    assert TrainConfig(optimizer="adamw", lr=5e-4).peak_lr() == 5e-4  # set: it wins
    cfg = TrainConfig(optimizer="adamw", max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(9, cfg) == pytest.approx(3e-3) and lr_at(100, cfg) == pytest.approx(3e-4)
    for optimizer in ("muon", "adamw"):
        opt = make_optimizer(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), TrainConfig(optimizer=optimizer))
        assert {g["lr"] for g in opt.param_groups} == {LR_DEFAULT[optimizer]}
