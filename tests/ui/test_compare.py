"""Compare and the class board from everyone's runs (a real SQLite MLflow store, logged by the real Tracker):
a resumed run logs its repeated steps again, yet every curve has one point per step with x increasing whatever
the axis; the table has steps, data and tokenizer, rounded numbers; bits per character ranks the board."""

import time

import pytest

from slm_blocks.training.events import DoneEvent, EvalEvent, StepEvent
from slm_blocks.training.tracking import Tracker
from slm_blocks.ui.compare import class_board, compare_frames, curves_chart


def step(s, loss, elapsed):
    return StepEvent(s, loss, 1e-3, 1.0, 1000.0, s * 256, elapsed, 0.0)


def evals(s, val, bpc):
    return EvalEvent(s, val, val, 2.718 ** val, bpc, None)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two runs in one MLflow store: 'resumed' (steps 1-4, then resumed from step 2: steps 3-6 logged again,
    its training time continuing) and 'small' (a single eval)."""
    from mlflow.tracking import MlflowClient

    from conftest import small_spec

    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    from slm_blocks.training.config import TrainConfig
    from slm_blocks.training.data import DataConfig
    from slm_blocks.training.run import TokenizerConfig, prepare_run

    def run(name, events_by_session):
        r = prepare_run(root / name, small_spec(), DataConfig(max_chars=20_000), TokenizerConfig("char"),
                        TrainConfig(max_steps=6, batch_size=2, device="cpu", precision="fp32"))
        for events in events_by_session:  # each session: a Tracker reopening the same MLflow run
            t = Tracker(r, uri)
            for e in events:
                t.on_event(e)
                time.sleep(0.002)  # distinct timestamps: the newest value per step wins
            t.flush()
        return r

    run("resumed", [[step(1, 3.0, 1.0), step(2, 2.8, 2.0), evals(2, 2.7, 3.91234), step(3, 2.6, 3.0),
                     step(4, 2.5, 4.0), evals(4, 2.45, 3.5)],
                    [step(3, 2.65, 3.1), step(4, 2.55, 4.1), evals(4, 2.5, 3.6), step(5, 2.4, 5.1),
                     step(6, 2.3, 6.1), evals(6, 2.25, 3.2567891), DoneEvent(6, "max_steps", "done", None, 2.25)]])
    run("small", [[step(1, 3.5, 0.5), evals(1, 3.4, 4.9), DoneEvent(1, "max_steps", "done", None, 3.4)]])
    return uri


@pytest.mark.parametrize("x_axis", ["step", "tokens", "time"])
def test_everyones_curves_one_point_per_step_and_the_axis_choice_works(store, x_axis):
    table, curves, scatter, msg = compare_frames(None, store, x_axis)
    train = curves[(curves.run == "resumed") & (curves.split == "train")]
    assert len(train) == 6 and train.x.is_monotonic_increasing  # no zigzag from the repeated steps
    expected = {"step": [1, 2, 3, 4, 5, 6], "tokens": [256, 512, 768, 1024, 1280, 1536],
                "time": [1.0, 2.0, 3.1, 4.1, 5.1, 6.1]}[x_axis]
    assert list(train.x) == pytest.approx(expected)
    assert list(train.y) == [3.0, 2.8, 2.65, 2.55, 2.4, 2.3]  # the resumed values replace the first ones
    val = curves[(curves.run == "resumed") & (curves.split == "validation")]
    assert list(val.y) == [2.7, 2.5, 2.25]
    assert len(curves[curves.run == "small"]) == 2  # one step, one eval: still drawn (markers)


def test_everyones_table_steps_data_tokenizer_rounded(store):
    table, _, scatter, _ = compare_frames(None, store, "step")
    row = table.set_index("run").loc["resumed"]
    assert row["steps"] == 6 and row["tokens seen"] == "1.54K" and row["time (s)"] == 6.1  # numbers as 808K / 4.17M
    assert row["bits/char"] == 3.2568 and row["val loss"] == 2.25
    assert row["tokenizer"] == "char" and row["data"] == "builtin:stories"
    assert row["parameters"].endswith("K") and row["status"] == "done"
    assert set(scatter.run) == {"resumed", "small"} and (scatter.params > 0).all()


def test_bits_per_character_axis(store):
    _, curves, _, _ = compare_frames(None, store, "step", "bits per character")
    val = curves[(curves.run == "resumed") & (curves.split == "validation")]
    assert list(val.y) == pytest.approx([3.91234, 3.6, 3.2567891])
    train = curves[(curves.run == "resumed") & (curves.split == "train")]
    assert train.y.iloc[-1] == pytest.approx(2.3 * 3.2567891 / 2.25)  # the run's bits per nat/token


def test_class_board_ranks_by_bits_per_character(store):
    board = class_board(store)
    # each run named with its learner: a label derived from its session's folder (runs outside one: cli)
    assert [r.split(" · ")[0] for r in board.run] == ["resumed", "small"] and list(board["rank"]) == [1, 2]
    assert all(" · " in r for r in board.run)
    assert list(board["bits/char"]) == [3.2568, 4.9]
    assert board.parameters.str.endswith("K").all() and set(board.data) == {"builtin:stories"}


def test_chart_styles_train_solid_validation_dashed_with_markers(store):
    _, curves, _, _ = compare_frames(None, store, "time")
    chart = curves_chart(curves, "time")
    train, val, points = chart["layer"]
    assert "strokeDash" not in train["mark"] and val["mark"]["strokeDash"] and points["mark"]["type"] == "point"
    assert points["encoding"]["fill"]["field"] == "run"  # markers in the run's colour
    assert chart["encoding"]["color"]["field"] == "run"  # one colour per run
    assert chart["encoding"]["x"]["title"] == "training time (s)"
    assert len(chart["data"]["values"]) == len(curves)
