"""Training: data sources, tokenizers, the run folder, the loop (a generator of typed events), checkpoints,
MLflow tracking, the job schema, the driver the CLI and the app's workers share, and the queue the app runs
trainings in. Builds on `slm_blocks.model`."""

from .events import (  # as `from slm_blocks.training import train, StepEvent` always gave them
    CheckpointEvent, DoneEvent, ErrorEvent, EvalEvent, Event, ReadyEvent, SampleEvent, StatusEvent, StepEvent,
    WarningEvent, decode, encode,
)
from .loop import evaluate, get_batch, lm_loss, train
from .schedule import lr_at

__all__ = ["CheckpointEvent", "DoneEvent", "ErrorEvent", "EvalEvent", "Event", "ReadyEvent", "SampleEvent",
           "StatusEvent", "StepEvent", "WarningEvent", "decode", "encode", "evaluate", "get_batch", "lm_loss",
           "lr_at", "train"]
