"""Compare reads a run's history once (run.read_history): after a resume re-trains steps past the last checkpoint,
each step and eval is one point, the newest."""

import json
from types import SimpleNamespace

from slm_blocks import load_preset
from slm_blocks.ui.compare import compare_frames


def test_compare_has_one_point_per_step_after_a_resume(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"spec": load_preset("tiny-char").to_dict(),
                                                  "tokenizer": {"kind": "char"}, "train": {}, "data": {}}))
    step = lambda s, loss: {"kind": "step", "step": s, "loss": loss, "tokens_seen": s * 10, "elapsed_s": s}  # noqa
    evals = lambda s, v: {"kind": "eval", "step": s, "val_loss": v, "bits_per_char": v}  # noqa
    lines = [step(1, 3.0), step(2, 2.9), evals(2, 2.8), step(3, 2.7),  # killed after step 3, checkpoint at 2
             step(3, 2.75), evals(4, 2.6), step(4, 2.6), evals(4, 2.55)]  # resumed: step 3 and eval 4 again
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    session = SimpleNamespace(runs={"r": SimpleNamespace(dir=run_dir, job=None)})
    table, curves, scatter, msg = compare_frames(session, None, "step")
    train = curves[(curves.run == "r") & (curves.split == "train")]
    val = curves[(curves.run == "r") & (curves.split == "validation")]
    assert list(train.x) == [1, 2, 3, 4] and list(train.y) == [3.0, 2.9, 2.75, 2.6]
    assert list(val.x) == [2, 4] and list(val.y) == [2.8, 2.55]
    assert table.iloc[0]["val loss"] == 2.55 and table.iloc[0]["steps"] == 4
