"""Compare reads a run's history once (run.read_history): after a resume re-trains steps past the last checkpoint,
each step and eval is one point, the newest."""

import json
from types import SimpleNamespace

from slm_blocks import load_preset
from slm_blocks.ui.compare import compare_frames
from slm_blocks.ui.state import SessionRun


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
    session = SimpleNamespace(runs={"r": SessionRun("r", run_dir)})
    table, curves, scatter, msg = compare_frames(session, None, "step")
    train = curves[(curves.run == "r") & (curves.split == "train")]
    val = curves[(curves.run == "r") & (curves.split == "validation")]
    assert list(train.x) == [1, 2, 3, 4] and list(train.y) == [3.0, 2.9, 2.75, 2.6]
    assert list(val.x) == [2, 4] and list(val.y) == [2.8, 2.55]
    assert table.iloc[0]["val loss"] == 2.55 and table.iloc[0]["steps"] == 4


def _run(root, name, val):
    run_dir = root / name
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"spec": load_preset("tiny-char").to_dict(),
                                                  "tokenizer": {"kind": "char"}, "train": {}, "data": {}}))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "step", "step": 1, "loss": val + 0.1}) + "\n" +
                                           json.dumps({"kind": "eval", "step": 1, "val_loss": val}) + "\n")
    return SessionRun(name, run_dir)


def test_a_damaged_run_is_named_and_the_others_are_shown(tmp_path):
    runs = {n: _run(tmp_path, n, v) for n, v in (("good", 2.0), ("broken", 2.1), ("torn", 2.2), ("also-good", 2.3))}
    (runs["broken"].dir / "run.json").write_text('{"spec": {"blocks": [')  # cut off mid-write
    (runs["torn"].dir / "run.json").write_text('{"spec": 7, "tokenizer": null}')
    table, curves, _, msg = compare_frames(SimpleNamespace(runs=runs), None, "step")
    assert list(table["run"]) == ["good", "also-good"] and set(curves.run) == {"good", "also-good"}
    assert "**broken**" in msg and "**torn**" in msg and "cannot be read" in msg, msg


def test_an_unreadable_mlflow_store_falls_back_to_the_sessions_runs(tmp_path):
    """A damaged mlflow.db (shared by everyone) used to break every visitor's Compare and the class board."""
    from slm_blocks.ui.handlers import Handlers
    from slm_blocks.ui.state import Limits, SessionRun, SessionStore

    store = SessionStore(Limits(data_dir=tmp_path / "app"))
    store.limits.data_dir.mkdir(parents=True)
    (store.limits.data_dir / "mlflow.db").write_bytes(b"this is not a SQLite database" * 100)
    request = SimpleNamespace(session_hash="learner")
    session = store.get("learner")
    run = _run(session.root, "mine", 2.0)
    session.runs["mine"] = SessionRun("mine", run.dir)
    h = Handlers(store)
    table, _, _, msg = h.compare(True, "step", "loss", request)
    assert list(table["run"]) == ["mine"] and "MLflow" in msg and "cannot be read" in msg, msg
    board, board_msg = h.class_board()
    assert board.empty and "cannot be read" in board_msg and "Traceback" not in board_msg
