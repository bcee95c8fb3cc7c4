"""Distillation: α = 0 is plain training step for step; the KL term is zero when the student is a copy of the
teacher; kd and ce are logged (events, metrics.jsonl, MLflow); resume is exact; the student gets the teacher's
tokenizer."""

import threading

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import SHAKESPEARE, small_spec
from slm_blocks.training.distill import kd_loss
from slm_blocks.grow.prepare import drive
from slm_blocks.training.events import DoneEvent, StepEvent
from slm_blocks.training.job import Job
from slm_blocks.training.run import open_run

pytestmark = pytest.mark.usefixtures("one_thread")
T = 24
DATA = {"source": "files", "paths": [str(SHAKESPEARE)], "max_chars": 40_000}


def job(max_steps=4, teacher=None, init_from=None, d_model=32, layers=2, **train):
    cfg = dict(max_steps=max_steps, batch_size=4, seq_len=T, warmup_steps=1, log_every=1, eval_every=0,
               sample_tokens=0, checkpoint_every=0, device="cpu", precision="fp32", seed=11)
    cfg.update(train)
    return Job.from_dict({"spec": small_spec(seq=T, d_model=d_model, layers=layers).to_dict(), "data": DATA,
                          "train": cfg, "teacher": teacher, "init_from": init_from})


def steps(events):
    return [e for e in events if isinstance(e, StepEvent)]


def run(j, out, **kw):
    events = []
    code = drive(j, out, emit=events.append, track=kw.pop("track", False), **kw)
    assert code == 0, events[-1]
    return events


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 3-layer, d 48 teacher trained a few steps on the same text."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("distill") / "teacher"
    run(job(max_steps=8, d_model=48, layers=3, lr=3e-3), out)
    torch.set_num_threads(before)
    return out


def test_kd_loss_is_zero_for_equal_logits_and_grows_with_disagreement():
    a = torch.randn(2, 5, 11)
    assert float(kd_loss(a, a.clone(), 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(a, torch.randn(2, 5, 11), 2.0)) > 0.01
    # T² · KL at temperature T: the T² factor keeps the size of the term comparable across temperatures
    b = torch.randn(2, 5, 11)
    p = torch.log_softmax(b / 3, -1)
    q = torch.log_softmax(a / 3, -1)
    manual = 9 * (p.exp() * (p - q)).sum(-1).mean()
    assert float(kd_loss(a, b, 3.0)) == pytest.approx(float(manual), rel=1e-5)


def test_alpha_zero_is_plain_training_step_for_step(teacher, tmp_path):
    plain = steps(run(job(), tmp_path / "plain"))
    distilled = steps(run(job(teacher={"source": str(teacher), "alpha": 0.0}), tmp_path / "alpha0"))
    assert [e.loss for e in plain] == [e.loss for e in distilled]  # bit for bit
    assert all(e.kd_loss > 0 and e.ce_loss == e.loss for e in distilled)  # the teacher ran, with no weight
    a, b = open_run(tmp_path / "plain", load_data=False), open_run(tmp_path / "alpha0", load_data=False)
    for (k, x), (_, y) in zip(a.load_model().state_dict().items(), b.load_model().state_dict().items()):
        assert torch.equal(x, y), k
    # the student took the teacher's tokenizer and vocabulary automatically
    t = open_run(teacher, load_data=False)
    assert b.tokenizer.get_vocab() == t.tokenizer.get_vocab() and b.spec.vocab_size == t.spec.vocab_size


def test_kl_term_is_zero_when_the_student_is_a_copy_of_the_teacher(teacher, tmp_path):
    events = run(job(max_steps=1, init_from=str(teacher), teacher={"source": str(teacher), "alpha": 0.5,
                                                                    "temperature": 3.0}), tmp_path / "copy")
    (first,) = steps(events)
    assert first.kd_loss == pytest.approx(0.0, abs=1e-6)
    assert first.loss == pytest.approx(0.5 * first.ce_loss, rel=1e-6)


def test_kd_and_ce_are_logged_and_resume_is_exact(teacher, tmp_path, mlflow_uri):
    t = {"source": str(teacher), "alpha": 0.7, "temperature": 2.0}
    whole = steps(run(job(max_steps=6, teacher=t, checkpoint_every=3), tmp_path / "whole"))
    stop = threading.Event()
    events = []

    def emit(e):
        events.append(e)
        if isinstance(e, StepEvent) and e.step == 3:
            stop.set()

    assert drive(job(max_steps=6, teacher=t, checkpoint_every=3), tmp_path / "split", emit=emit, stop=stop,
                 mlflow_uri=mlflow_uri) == 0
    assert isinstance(events[-1], DoneEvent) and events[-1].reason == "stopped"
    rest = run(None, tmp_path / "split", resume=True, track=True, mlflow_uri=mlflow_uri)
    split = steps(events) + steps(rest)
    assert [(e.loss, e.kd_loss, e.ce_loss) for e in whole] == [(e.loss, e.kd_loss, e.ce_loss) for e in split]
    assert all(abs(e.loss - (0.7 * e.kd_loss + 0.3 * e.ce_loss)) < 1e-5 for e in whole)
    # logged apart: metrics.jsonl (the run's own history) and MLflow
    history = [h for h in open_run(tmp_path / "split", load_data=False).history() if h["kind"] == "step"]
    assert [h["kd_loss"] for h in history] == [e.kd_loss for e in whole]
    run_id = open_run(tmp_path / "split", load_data=False).meta["mlflow_run_id"]
    client = MlflowClient(tracking_uri=mlflow_uri)
    kd = [m.value for m in sorted(client.get_metric_history(run_id, "train_kd"), key=lambda m: m.step)]
    ce = [m.value for m in sorted(client.get_metric_history(run_id, "train_ce"), key=lambda m: m.step)]
    assert kd == pytest.approx([e.kd_loss for e in whole]) and ce == pytest.approx([e.ce_loss for e in whole])
    params = client.get_run(run_id).data.params
    assert params["teacher.source"] == "teacher" and params["teacher.alpha"] == "0.7"
