"""Training: data sources, tokenizers, the run folder, the loop (a generator of typed events), checkpoints,
MLflow tracking, and the worker processes and queue the app runs trainings in. Builds on `slm_blocks.model`."""

from .loop import (  # the loop's public names, as `from slm_blocks.training import train` always gave them
    CheckpointEvent, DoneEvent, EvalEvent, Event, SampleEvent, StepEvent, WarningEvent, evaluate, get_batch, lm_loss,
    lr_at, train,
)

__all__ = ["CheckpointEvent", "DoneEvent", "EvalEvent", "Event", "SampleEvent", "StepEvent", "WarningEvent",
           "evaluate", "get_batch", "lm_loss", "lr_at", "train"]
