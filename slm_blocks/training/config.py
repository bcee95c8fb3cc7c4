"""Training hyperparameters as one typed, JSON-serializable record with sensible CPU defaults.

Each field's metadata (bounds, help, label) is the single source for the CLI flags, the app's form and the
error messages. Settings left empty (None) are derived here, once, from max_steps / max_time, so the app
and the CLI train the same run for the same job: see `derived()`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch

from .hardware import bf16_is_faster
from .schema import Problem, SettingsError, parse_record, setting

# What a run saved before these settings existed trained with: a reopened old run resumes the same way.
SAVED_BEFORE_THE_SETTING = {"optimizer": "adamw", "decay": "cosine"}
# The peak learning rate an empty `lr` means, per optimizer: the best of each in bench/bench_quality.py's
# sweep (README, "what lost"); AdamW at Muon's 1.6e-2 spiked in its first steps.
LR_DEFAULT = {"muon": 1.6e-2, "adamw": 3e-3}


@dataclass(frozen=True)
class Derived:
    """The intervals a run really uses (every empty setting resolved)."""

    warmup_steps: int
    log_every: int
    eval_every: int  # steps, 0 = never
    first_eval: int  # one extra early eval + sample at this step (0 = none): a learner sees text soon
    eval_every_s: float | None  # and every this many seconds of a time-budgeted run
    first_eval_s: float | None  # and a first one this early in a time-budgeted run (the app's runs all are)
    checkpoint_every: int  # steps, 0 = only at the end
    checkpoint_every_s: float | None
    sample_tokens: int


@dataclass
class TrainConfig:
    # --- the common settings (the form shows them first)
    max_steps: int = setting(2000, lo=1, hi=10**9, advanced=False, label="Max steps",
                             help="optimizer steps to train for; with a time budget, the most it may take")
    max_time: float | None = setting(None, lo=0, lo_open=True, hi=10**7, advanced=False, label="Time budget",
                                     help="time budget in seconds: warmup and decay follow the elapsed share of it",
                                     empty="no time limit")
    batch_size: int = setting(32, lo=1, hi=4096, advanced=False, label="Batch size",
                              help="sequences per step (per device)")
    lr: float | None = setting(None, lo=0, lo_open=True, hi=1, advanced=False, label="Learning rate",
                               help="peak learning rate (Muon and AdamW alike)",
                               empty="1.6e-2 with Muon, 3e-3 with AdamW")
    seed: int = setting(1337, lo=0, hi=2**31 - 1, advanced=False, label="Seed",
                        help="same seed, same data and settings: the same run")
    # --- advanced
    optimizer: Literal["muon", "adamw"] = setting(
        "muon", label="Optimizer", help="muon: Muon on hidden weight matrices + AdamW on embeddings, head, norms and "
        "biases (reaches a loss sooner); adamw: AdamW on everything")
    muon_momentum: float = setting(0.9, lo=0, hi=1, hi_open=True, label="Muon momentum",
                                   help="Nesterov momentum of the Muon updates")
    decay: Literal["linear", "cosine"] = setting("linear", label="Learning-rate decay",
                                                 help="shape of the decay from the peak to the minimum after warmup")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = setting(
        "auto", label="Precision", help="auto: bf16 on a GPU where a start-up probe finds bf16 matmuls faster than "
        "fp32, fp32 elsewhere")
    grad_accum: int = setting(1, lo=1, hi=1024, label="Gradient accumulation",
                              help="micro-batches per step: a larger effective batch in the same memory")
    seq_len: int | None = setting(None, lo=2, hi=1 << 20, label="Sequence length",
                                  help="tokens per training window", empty="the model's context length")
    warmup_steps: int | None = setting(None, lo=0, hi=10**9, label="Warmup steps",
                                       help="linear warmup to the peak learning rate",
                                       empty="min(20, max_steps / 10)")
    min_lr_ratio: float = setting(0.1, lo=0, hi=1, label="Min learning rate (× peak)",
                                  help="the decay ends at learning rate × this")
    weight_decay: float = setting(0.0, lo=0, hi=10, label="Weight decay",
                                  help="decoupled decay on weight matrices (not on norms or biases)")
    beta1: float = setting(0.9, lo=0, hi=1, hi_open=True, label="Adam β1", help="momentum of the gradient")
    beta2: float = setting(0.99, lo=0, hi=1, hi_open=True, label="Adam β2",
                           help="momentum of the squared gradient")
    grad_clip: float = setting(1.0, lo=0, hi=1e6, label="Gradient clip", help="max gradient norm (0 = no clipping)")
    early_stop_patience: int | None = setting(None, lo=1, hi=10**6, label="Early stopping patience",
                                              help="stop after this many evals without improvement",
                                              empty="never stop early")
    early_stop_min_delta: float = setting(0.0, lo=0, hi=100, label="Early stopping min delta",
                                          help="an eval must beat the best loss by this much to count")
    eval_every: int | None = setting(None, lo=0, hi=10**9, label="Eval + sample every (steps)",
                                     help="validation loss and a sample every N steps (0 = never)",
                                     empty="10 evals per run")
    eval_batches: int = setting(5, lo=1, hi=10_000, label="Eval batches", help="batches per validation estimate")
    sample_tokens: int | None = setting(None, lo=0, hi=10_000, label="Sample length (tokens)",
                                        help="tokens sampled at each eval (0 = none)",
                                        empty="min(128, 2 × context)")
    sample_prompt: str = setting("\n", label="Sample prompt", help="text the samples continue")
    checkpoint_every: int | None = setting(None, lo=0, hi=10**9, label="Checkpoint every (steps)",
                                           help="resumable checkpoint every N steps (0 = only at the end)",
                                           empty="4 per run")
    keep_checkpoints: int = setting(3, lo=1, hi=1000, label="Checkpoints kept", help="newest checkpoints kept")
    log_every: int | None = setting(None, lo=1, hi=10**9, label="Log every (steps)",
                                    help="training loss and speed every N steps",
                                    empty="min(10, max_steps / 50)")
    device: Literal["auto", "cpu"] = setting("auto", label="Device", help="auto: the GPU when there is one")
    compile: bool = setting(False, label="torch.compile",
                            help="compile the model: pays off on GPUs; small CPU models gain ~2% after a long compile")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Parse and check; SettingsError (a ValueError) lists every problem, paths relative to the config."""
        problems: list[Problem] = []
        cfg = parse_record(cls, d, "", problems)
        problems += cfg.problems()
        if problems:
            raise SettingsError(problems, "training settings")
        return cfg

    @classmethod
    def from_saved(cls, d: dict) -> "TrainConfig":
        """A run.json's settings: one saved before a setting existed gets what it trained with then."""
        return cls.from_dict({**SAVED_BEFORE_THE_SETTING, **d})

    def problems(self, path: str = "") -> list[Problem]:
        """Cross-field checks (each field's own type and bounds are the parser's)."""
        p = (path + ".") if path else ""
        out = []
        if self.warmup_steps is not None and self.warmup_steps > self.max_steps:
            out.append(Problem(p + "warmup_steps", f"is {self.warmup_steps}, more than max_steps {self.max_steps}; "
                               "lower it or leave it empty"))
        return out

    def validated(self) -> "TrainConfig":
        """Check a config built in code (TrainConfig(...)) the way from_dict checks parsed ones."""
        return type(self).from_dict(self.to_dict())

    # --- what the empty settings mean ----------------------------------------------
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else LR_DEFAULT[self.optimizer]

    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else min(20, self.max_steps // 10)

    def derived(self, max_seq_len: int = 256) -> Derived:
        """Every interval resolved. With a time budget the evals and checkpoints left empty also happen at
        fixed shares of the time (a 30-second run gets its 10 evals whatever its speed)."""
        timed = self.max_time is not None
        eval_every = self.eval_every if self.eval_every is not None else max(1, self.max_steps // 10)
        return Derived(
            warmup_steps=self.warmup(),
            log_every=self.log_every if self.log_every is not None else max(1, min(10, self.max_steps // 50)),
            eval_every=eval_every,
            first_eval=eval_every // 4 if self.eval_every is None else 0,
            eval_every_s=self.max_time / 10 if timed and self.eval_every is None else None,
            first_eval_s=min(10.0, self.max_time / 20) if timed and self.eval_every is None else None,
            checkpoint_every=(self.checkpoint_every if self.checkpoint_every is not None
                              else max(50, self.max_steps // 4)),
            checkpoint_every_s=self.max_time / 4 if timed and self.checkpoint_every is None else None,
            sample_tokens=self.sample_tokens if self.sample_tokens is not None else min(128, 2 * max_seq_len),
        )

    def resolved_precision(self, device: torch.device) -> str:
        """auto: bf16 on a GPU that supports it and where the start-up probe (hardware.py) finds bf16 matmuls
        faster than fp32; fp32 elsewhere. On CPU auto stays fp32 even where bf16 units exist: at tiny-char's
        width bf16 autocast trained slower (36 vs 30 ms/step) on the machine where bf16 matmuls were 5.7× faster."""
        if self.precision != "auto":
            return self.precision
        if device.type == "cuda" and torch.cuda.is_bf16_supported() and bf16_is_faster(device):
            return "bf16"
        return "fp32"
