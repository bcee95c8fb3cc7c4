"""The shared training queue's fair-share rules: a global waiting cap, a per-client cap, and a bounded time slice
while others wait (the running training is checkpointed, goes back in line and later continues where it was).

The rules are checked on entries whose worker is faked (instant), and once end to end with real workers.
"""

from __future__ import annotations

import time

import pytest

from slm_blocks.training.events import ReadyEvent, StatusEvent, StepEvent
from slm_blocks.training.jobs import QueuedTraining, QueueFull, TrainingQueue

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Fake(QueuedTraining):
    """An entry whose 'worker' starts instantly and trains until told to stop (no process)."""

    def __init__(self, client=None):
        super().__init__(None, "/nonexistent/run", resume=True)
        self.client, self.preempted = client, 0

    def _start(self, on_exit):
        self.on_exit, self.started_at = on_exit, time.time()
        self.turns += 1
        self.events.append(StepEvent(step=1, loss=1.0, lr=1e-3, grad_norm=1.0, tokens_per_s=1.0, tokens_seen=1,
                                     elapsed_s=1.0, eta_s=1.0))
        self._set("running")

    def preempt(self):
        self.preempting, self.preempted = True, self.preempted + 1

    def end(self, status="done"):
        self._set(status)
        self.on_exit(self)


def test_the_queue_holds_at_most_max_waiting_and_per_client():
    q = TrainingQueue(1, max_waiting=2, per_client=2)
    a = q.submit(Fake("10.0.0.1"))
    b = q.submit(Fake("10.0.0.1"))
    with pytest.raises(QueueFull, match="from your address"):
        q.submit(Fake("10.0.0.1"))  # a running and b waiting: this client has its share
    c = q.submit(Fake("10.0.0.2"))
    with pytest.raises(QueueFull, match="already waiting"):
        q.submit(Fake("10.0.0.3"))  # b and c wait: the line is full
    assert a.status == "running" and q.position(b) == 1 and q.position(c) == 2
    a.end()
    assert b.status == "running" and q.position(c) == 1
    q.submit(Fake("10.0.0.1"))  # a ended: room for this client again
    assert TrainingQueue(1).submit(Fake(None))  # no caps: anything goes


def test_a_slice_is_bounded_only_while_others_wait():
    q = TrainingQueue(1, slice_s=60)
    a = q.submit(Fake("x"))
    later = time.time() + 120
    assert q.rebalance(later) == [] and a.preempted == 0  # nobody waits: it keeps the trainer
    b = q.submit(Fake("y"))
    assert q.rebalance(time.time()) == []  # someone waits, but a's slice is not used up
    assert q.rebalance(later) == [a] and a.preempted == 1
    assert q.rebalance(later) == []  # asked once


def test_a_preempted_training_goes_back_in_line_and_continues(tmp_path, monkeypatch):
    """Real workers, one trainer slot, a 2 s slice: A trains; B arrives and waits; A is stopped with a checkpoint
    and queued behind B; B trains to its end; A's turn comes again and it continues from its checkpoint, in the
    same entry (whoever follows it saw "waiting" and then steps going on)."""
    from slm_blocks import load_preset
    from slm_blocks.training.checkpoint import latest_checkpoint
    from slm_blocks.training.job import Job

    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def entry(name, steps=100_000):
        job = Job.from_dict({"spec": load_preset("tiny-char").to_dict(),
                             "data": {"source": "builtin", "name": "stories", "max_chars": 100_000},
                             "train": {"max_steps": steps, "batch_size": 2, "eval_every": 0, "sample_tokens": 0,
                                       "checkpoint_every": 0, "log_every": 1, "device": "cpu", "max_time": 300}})
        return QueuedTraining(job, tmp_path / name, track=False)

    q = TrainingQueue(1, slice_s=2, tick_s=0.2)
    a, b = q.submit(entry("a")), None
    try:
        wait(lambda: any(isinstance(e, StepEvent) for e in a.events), 90, "A's first step")
        b = q.submit(entry("b", steps=5))  # ends on its own: then A's turn comes again
        wait(lambda: a.status == "queued", 60, "A to be paused for B")
        assert q.position(a) == 1 and not a.finished
        paused_at = max(e.step for e in a.events if isinstance(e, StepEvent))
        assert latest_checkpoint(a.run_dir).name == f"step-{paused_at:06d}"  # the stop checkpoint of its last step
        assert any(isinstance(e, StatusEvent) and "others are waiting" in e.message for e in a.events)
        wait(lambda: any(isinstance(e, StepEvent) for e in b.events), 90, "B's first step")
        wait(lambda: a.status == "running" and any(isinstance(e, StepEvent) for e in a.events[a.carried:]), 120,
             "A's next turn")
        ready = [e for e in a.events if isinstance(e, ReadyEvent)]
        assert ready[-1].start_step == paused_at and a.turns == 2, (ready, paused_at)
        resumed = [e.step for e in a.events[a.carried:] if isinstance(e, StepEvent)]
        assert resumed[0] == paused_at + 1, (resumed[:3], paused_at)
    finally:
        for e in (a, b):
            if e is not None:
                q.cancel(e)
        assert q.wait_idle(60)


def wait(pred, timeout, what):
    end = time.time() + timeout
    while not pred():
        assert time.time() < end, f"no {what} within {timeout} s"
        time.sleep(0.1)
