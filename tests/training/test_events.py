"""Events cross the worker pipe as {"event": <fixed wire name>, ...}: every type round-trips, junk is refused, and
nothing downstream matches class-name strings."""

import json
import math
import re
from dataclasses import fields
from pathlib import Path

import pytest

from slm_blocks.training import StepEvent, train  # the old import path keeps working
from slm_blocks.training.events import (
    WIRE_NAMES, CheckpointEvent, DoneEvent, ErrorEvent, EvalEvent, ReadyEvent, SampleEvent, StatusEvent, WarningEvent,
    decode, encode,
)
from slm_blocks.training.loop import DoneEvent as LoopDone

ROOT = Path(__file__).resolve().parents[2]

EXAMPLES = [
    StepEvent(3, 2.5, 1e-3, 0.7, 1234.5, 999, 1.5, 20.0),
    EvalEvent(10, 2.4, 2.3, 9.97, 3.3, None),
    EvalEvent(10, 2.4, 2.3, 9.97, 3.3, 0.25),
    SampleEvent(10, "Once upon a \"time\"\n"),
    CheckpointEvent(10, "/runs/x/checkpoints/step-000010"),
    WarningEvent(4, "non-finite loss"),
    DoneEvent(20, "max_time", "reached max_time 30 s", None, None),
    StatusEvent("loading the data"),
    ReadyEvent(68, 800_000, 1_000_000, 100_000, "builtin:stories", 1000, 300.0, 0),
    ErrorEvent("out of memory: make the model smaller"),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_json(event):
    wire = json.loads(json.dumps(encode(event), allow_nan=False))  # strict JSON: what a pipe can carry
    assert wire["event"] == WIRE_NAMES[type(event)]
    assert decode(wire) == event


def test_every_event_type_has_a_wire_name_and_the_loop_reexports_them():
    assert len(set(WIRE_NAMES.values())) == len(WIRE_NAMES) == 9
    assert LoopDone is DoneEvent and callable(train)


def test_nan_travels_as_null_and_comes_back_as_nan():
    e = EvalEvent(5, float("nan"), 2.0, 7.4, 2.9, None)
    wire = encode(e)
    assert wire["train_loss"] is None and json.dumps(wire, allow_nan=False)
    back = decode(wire)
    assert math.isnan(back.train_loss) and back.accuracy is None


@pytest.mark.parametrize("junk", [{"event": "StepEvent", "step": 1}, {"event": "nope"}, {"step": 1}, [1], "step",
                                  {"event": "step", "step": 1}])
def test_unknown_or_incomplete_events_are_refused(junk):
    with pytest.raises(ValueError):
        decode(junk)


def test_extra_fields_are_ignored_so_older_readers_follow_newer_writers():
    wire = {**encode(StatusEvent("x")), "added_later": 1}
    assert decode(wire) == StatusEvent("x")


def test_encode_refuses_what_is_not_an_event():
    with pytest.raises(TypeError):
        encode({"event": "step"})


def test_no_class_name_strings_downstream():
    """The UI, the queue and the tracker use isinstance on decoded events: no "StepEvent"-style strings."""
    names = "|".join(t.__name__ for t in WIRE_NAMES)
    pattern = re.compile(rf"[\"']({names})[\"']")
    for path in [*(ROOT / "slm_blocks/ui").glob("*.py"), ROOT / "slm_blocks/training/jobs.py",
                 ROOT / "slm_blocks/training/tracking.py", ROOT / "slm_blocks/training/worker.py",
                 ROOT / "slm_blocks/training/driver.py", ROOT / "slm_blocks/cli.py"]:
        assert not pattern.search(path.read_text()), f"{path.name} matches events by class-name string"


def test_event_fields_are_plain_json_types():
    for cls in WIRE_NAMES:
        for f in fields(cls):
            assert f.type in ("int", "float", "str", "float | None", "str | None", "int | None"), (cls, f.name)
