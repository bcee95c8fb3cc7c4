"""The learning-rate schedule: linear warmup to the peak, then linear (or cosine) decay to peak × min_lr_ratio.

The schedule follows the run's *progress* p in [0, 1]: step / max_steps, or for a run with a time budget
max(step / max_steps, elapsed / max_time), so a 30-second run ends annealed at the minimum whatever its
speed. Elapsed training time is stored in every checkpoint, so a resumed run continues the same curve.

Resuming with extra steps starts a new *segment*: from the learning rate the run had at the resume step,
decaying to the minimum over the new remaining steps (no jump back up to the peak; a run still warming up
finishes its warmup first). The segment is stored with the run, so resuming it again stays exact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Segment:
    start_step: int = 0
    start_elapsed: float = 0.0  # seconds of training before the segment
    start_lr: float | None = None  # None: the first segment (warmup from zero)
    warmup_until: int = 0  # a later segment still warming up: the step where the peak is reached

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Segment":
        return cls(**d) if d else cls()


def progress(step: int, elapsed: float, cfg, seg: Segment = Segment()) -> float:
    """How far through the segment the run is, in [0, 1]: the larger of the step and time shares."""
    p = (step - seg.start_step) / max(1, cfg.max_steps - seg.start_step)
    if cfg.max_time:
        budget = cfg.max_time - seg.start_elapsed
        if budget > 0:
            p = max(p, (elapsed - seg.start_elapsed) / budget)
    return min(1.0, max(0.0, p))


def lr_at(step: int, cfg, elapsed: float = 0.0, segment: Segment | None = None) -> float:
    """The learning rate of the update made at `step` (0-based), `elapsed` seconds into the run."""
    seg = segment or Segment()
    peak = cfg.peak_lr()
    low = peak * cfg.min_lr_ratio
    p = progress(step, elapsed, cfg, seg)
    if seg.start_lr is None:  # warmup from zero: lr × (step + 1) / warmup_steps in a run without a time budget
        n, warm = cfg.max_steps, cfg.warmup()
        w = warm / n
        if warm and p < w:
            return peak * min(1.0, (p * n + 1) / warm)
        top = peak
    else:
        n = max(1, cfg.max_steps - seg.start_step)
        w = max(0, seg.warmup_until - seg.start_step) / n
        if w and p < w:
            return seg.start_lr + (peak - seg.start_lr) * p / w
        top = peak if w else seg.start_lr
    q = min(1.0, max(0.0, (p - w) / (1 - w) if w < 1 else 1.0))
    if cfg.decay == "linear":
        return low + (top - low) * (1 - q)
    return low + (top - low) * 0.5 * (1 + math.cos(math.pi * q))


def continue_with_more_steps(step: int, elapsed: float, cfg, seg: Segment, new_max_steps: int) -> Segment:
    """The segment a resume at `step` (with `elapsed` seconds trained) starts when the total grows to
    `new_max_steps`: it begins at the learning rate the old schedule gives there."""
    start_lr = lr_at(step, cfg, elapsed, seg)
    if seg.start_lr is None:
        warm_end = cfg.warmup()
        warming = bool(warm_end) and progress(step, elapsed, cfg, seg) < warm_end / cfg.max_steps
    else:
        warm_end = seg.warmup_until
        warming = step < warm_end
    return Segment(start_step=step, start_elapsed=elapsed, start_lr=start_lr,
                   warmup_until=max(warm_end, step + 1) if warming else 0)
