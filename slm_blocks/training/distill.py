"""Distillation: the student learns from a frozen teacher's next-token distribution as well as from the data.

    loss = α · kd + (1 − α) · ce,   kd = T² · KL(softmax(teacher / T) ‖ softmax(student / T)),   ce = cross-entropy

A temperature T > 1 softens both distributions, so the student also learns which wrong tokens the teacher
finds almost right (the "dark knowledge"); T² keeps the size of the gradients independent of T (Hinton et
al., 2015). α = 0 is plain training, α = 1 follows only the teacher.

The teacher lives inside the run folder (`teacher/`: its spec, safetensors weights and token ids, copied when
the run was prepared by slm_blocks.grow), so the loop needs nothing above the training layer, a resume is
exact, and the source run may keep training or vanish. It runs without gradients, in eval mode (no dropout,
no random numbers drawn) and under the same autocast as the student: the same precision.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..model.blocks.moe import balance
from ..model.spec import ModelSpec

TEACHER_DIR = "teacher"


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(teacher_T ‖ student_T), averaged over tokens; logits (B, T, V), computed in fp32."""
    T = float(temperature)
    s = F.log_softmax(student_logits.flatten(0, 1).float() / T, dim=-1)  # (B*T, V)
    t = F.log_softmax(teacher_logits.flatten(0, 1).float() / T, dim=-1)
    return T * T * F.kl_div(s, t, log_target=True, reduction="batchmean")


def save_teacher(run_dir: str | Path, spec: ModelSpec, state: dict[str, torch.Tensor], ids: dict, record: dict) -> None:
    """Freeze a teacher into `run_dir/teacher/` (spec, weights, token ids and `record`: source, alpha, temperature)."""
    d = Path(run_dir) / TEACHER_DIR
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, d / "model.safetensors",
              metadata={"format": "pt"})
    (d / "teacher.json").write_text(json.dumps({"spec": spec.to_dict(), "token_ids": ids, **record}, indent=2))


class Teacher:
    """A frozen teacher and the distillation weights; `loss(student, x, y)` -> (loss, kd, ce)."""

    def __init__(self, model, alpha: float, temperature: float):
        self.model = model.eval().requires_grad_(False)
        self.alpha, self.temperature = float(alpha), float(temperature)

    @classmethod
    def from_run(cls, run_dir: str | Path, device) -> "Teacher | None":
        """The run's teacher (None when the run has none). Built under a forked RNG: loading a teacher must not
        move the random streams, or a distilled run would not match a plain one step for step."""
        from ..model.modeling import build_model
        from .checkpoint import load_weights

        d = Path(run_dir) / TEACHER_DIR
        if not (d / "teacher.json").is_file():
            return None
        record = json.loads((d / "teacher.json").read_text())
        with torch.random.fork_rng(devices=[]):
            model = build_model(ModelSpec.from_dict(record["spec"]), **record.get("token_ids", {}))
        load_weights(d / "model.safetensors", model)
        return cls(model.to(device), record["alpha"], record["temperature"])

    def loss(self, student, x: torch.Tensor, y: torch.Tensor, parts: dict | None = None):
        """(α·kd + (1−α)·ce, kd, ce) for one batch; kd and ce are detached copies for logging. A student with
        mixture-of-experts layers also minimises its routers' balance loss (its unweighted value in parts["aux"])."""
        out = student(input_ids=x, use_cache=False)
        logits = out.logits  # (B, T, V)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())  # exactly lm_loss's computation
        with torch.no_grad():
            teacher_logits = self.model(input_ids=x, use_cache=False).logits  # (B, T, V)
        if teacher_logits.shape[-1] != logits.shape[-1]:
            raise ValueError(f"teacher.source: the teacher scores {teacher_logits.shape[-1]:,} tokens, the student "
                             f"{logits.shape[-1]:,}; they must share one tokenizer")
        kd = kd_loss(logits, teacher_logits, self.temperature)
        loss = (1.0 - self.alpha) * ce + self.alpha * kd
        if getattr(out, "router_logits", None):
            weighted, aux = balance(out.router_logits)
            loss = loss + weighted
            if parts is not None:
                parts["aux"] = float(aux.detach())
        return loss, kd.detach(), ce.detach()
