"""The default settings (Muon + AdamW, the measured learning rate, batch and schedule) still learn beyond the
shape they were tuned on: a text corpus and an algorithmic one, with only the length of the run set."""

import pytest
from conftest import small_spec

from slm_blocks.training.config import TrainConfig
from slm_blocks.training.data import DataConfig
from slm_blocks.training.loop import EvalEvent, train
from slm_blocks.training.run import TokenizerConfig, prepare_run

pytestmark = pytest.mark.usefixtures("one_thread")


def defaults_run(tmp_path, source: str, steps: int, **data):
    cfg = TrainConfig(max_steps=steps, eval_every=steps // 4, sample_tokens=0, checkpoint_every=0, device="cpu")
    assert cfg.optimizer == "muon"  # what is tested here is the default
    return prepare_run(tmp_path / source, small_spec(seq=48, d_model=64), DataConfig(name=source, **data),
                       TokenizerConfig("char"), cfg)


def test_defaults_converge_on_stories(tmp_path):
    evals = [e for e in train(defaults_run(tmp_path, "stories", 200, max_chars=200_000)) if isinstance(e, EvalEvent)]
    first, last = evals[0], evals[-1]
    assert first.step == 50 and last.step == 200
    assert last.val_loss < first.val_loss - 0.3, [round(e.val_loss, 3) for e in evals]
    assert last.val_loss < 1.6, [round(e.val_loss, 3) for e in evals]  # chars: ln(vocab) ≈ 4 at the start


def test_defaults_raise_accuracy_on_addition(tmp_path):
    evals = [e for e in train(defaults_run(tmp_path, "addition", 1200)) if isinstance(e, EvalEvent)]
    accs = [e.accuracy for e in evals]
    assert accs[-1] > accs[0] and accs[-1] >= 0.1, accs
