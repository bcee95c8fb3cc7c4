"""What a training reports, as typed events: the loop yields them, the CLI prints them, the worker sends them
to the app over a pipe, MLflow records them.

Across a process boundary an event travels as a small JSON object, `encode(event)` -> `{"event": "step", ...}`,
and comes back with `decode(d)`. The wire name is fixed in `WIRE_NAMES`, not taken from the class name, so
renaming a dataclass cannot silently break the app; everything downstream uses `isinstance` on decoded events.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Union


# ----------------------------------------------------------------------------- the loop's events


@dataclass
class StepEvent:
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    tokens_seen: int
    elapsed_s: float  # training time of the whole run so far (resumes included)
    eta_s: float
    kd_loss: float | None = None  # distillation only: T²·KL(teacher ‖ student), the part that follows the teacher
    ce_loss: float | None = None  # distillation only: cross-entropy on the data (loss = α·kd + (1−α)·ce)
    aux_loss: float | None = None  # mixture of experts only: the routers' load-balancing loss (top-k when balanced)


@dataclass
class EvalEvent:
    step: int
    train_loss: float
    val_loss: float
    perplexity: float
    bits_per_char: float
    accuracy: float | None  # exact match on algorithmic tasks


@dataclass
class SampleEvent:
    step: int
    text: str


@dataclass
class CheckpointEvent:
    step: int
    path: str


@dataclass
class WarningEvent:
    step: int
    message: str


@dataclass
class DoneEvent:
    step: int
    reason: str  # "max_steps" | "max_time" | "early_stop" | "stopped" | "error"
    message: str
    checkpoint: str | None
    best_val_loss: float | None


# ----------------------------------------------------------------------------- the driver's events


@dataclass
class StatusEvent:
    """What the driver is doing before the first step (loading data, building the tokenizer, ...)."""

    message: str


@dataclass
class ReadyEvent:
    """The run is prepared: the real vocabulary, model size and data size, and the limits it trains to."""

    vocab_size: int
    params: int
    train_tokens: int
    val_tokens: int
    data: str
    max_steps: int
    max_time: float | None
    start_step: int = 0


@dataclass
class ErrorEvent:
    """Training could not start or crashed; the message says what to change (no traceback)."""

    message: str


Event = Union[StepEvent, EvalEvent, SampleEvent, CheckpointEvent, WarningEvent, DoneEvent, StatusEvent, ReadyEvent,
              ErrorEvent]

WIRE_NAMES: dict[type, str] = {
    StepEvent: "step", EvalEvent: "eval", SampleEvent: "sample", CheckpointEvent: "checkpoint",
    WarningEvent: "warning", DoneEvent: "done", StatusEvent: "status", ReadyEvent: "ready", ErrorEvent: "error",
}
_BY_NAME = {name: cls for cls, name in WIRE_NAMES.items()}


def _json_safe(v):
    """NaN and infinities are not JSON: send them as None (a loss of NaN is 'no value' to every reader)."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def encode(event: Event) -> dict:
    """`{"event": <wire name>, **fields}`; raises TypeError for anything that is not an Event."""
    name = WIRE_NAMES.get(type(event))
    if name is None:
        raise TypeError(f"{type(event).__name__} is not a training event")
    return {"event": name, **{k: _json_safe(v) for k, v in asdict(event).items()}}


def decode(d: dict) -> Event:
    """The event `encode` made; ValueError for an unknown name or missing fields (extra fields are ignored, so
    an older reader can follow a newer writer)."""
    if not isinstance(d, dict) or d.get("event") not in _BY_NAME:
        raise ValueError(f"not a training event: {str(d)[:80]}")
    cls = _BY_NAME[d["event"]]
    kinds = {f.name: f.type for f in fields(cls)}  # annotations are strings here (postponed evaluation)
    values = {k: (math.nan if v is None and kinds[k] == "float" else v) for k, v in d.items() if k in kinds}
    try:
        return cls(**values)
    except TypeError as e:
        raise ValueError(f"malformed {d['event']} event: {e}") from None


def wire_name(event_or_cls) -> str:
    cls = event_or_cls if isinstance(event_or_cls, type) else type(event_or_cls)
    return WIRE_NAMES[cls]
