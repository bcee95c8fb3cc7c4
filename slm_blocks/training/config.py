"""Training hyperparameters as one typed, JSON-serializable record with sensible CPU defaults."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch


@dataclass
class TrainConfig:
    max_steps: int = 2000
    batch_size: int = 12
    seq_len: int | None = None  # None = the spec's max_seq_len
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * this
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 = no clipping
    grad_accum: int = 1
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu
    compile: bool = False  # torch.compile the model (pays off on GPUs; small CPU models gain ~2% after a long compile)
    seed: int = 1337
    log_every: int = 10
    eval_every: int = 250  # 0 = never
    eval_batches: int = 20
    sample_tokens: int = 200  # length of the sample at each eval (0 = none)
    sample_prompt: str = "\n"
    checkpoint_every: int = 500  # 0 = only at the end
    keep_checkpoints: int = 3
    max_time: float | None = None  # seconds
    early_stop_patience: int | None = None  # evals without improvement
    early_stop_min_delta: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d).validated()

    def validated(self) -> "TrainConfig":
        """Raise ValueError naming the field and the fix for any setting that cannot work."""
        positive = ("max_steps", "batch_size", "grad_accum", "log_every", "eval_batches")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a whole number ≥ 1 (got {getattr(self, name)!r})")
        for name in ("eval_every", "sample_tokens", "checkpoint_every", "keep_checkpoints", "warmup_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a whole number ≥ 0 (got {getattr(self, name)!r})")
        if self.seq_len is not None and self.seq_len < 1:
            raise ValueError(f"seq_len must be ≥ 1 or empty for the model's context (got {self.seq_len})")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise ValueError(f"lr must be in (0, 1], e.g. 1e-3 (got {self.lr!r})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("beta1 and beta2 must be in [0, 1), e.g. 0.9 and 0.99")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be ≥ 0")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16 (got {self.precision!r})")
        if self.device not in ("auto", "cpu"):
            raise ValueError(f"device must be auto or cpu (got {self.device!r})")
        if self.max_time is not None and not self.max_time > 0:
            raise ValueError(f"max_time must be a positive number of seconds or empty (got {self.max_time})")
        return self

    def resolved_precision(self, device: torch.device) -> str:
        """auto: bf16 on a GPU that supports it, fp32 elsewhere (on CPU bf16 pays only for wide models)."""
        if self.precision != "auto":
            return self.precision
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
