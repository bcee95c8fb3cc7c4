"""Training checkpoints: everything needed to resume exactly, in safetensors + JSON, written atomically.

A checkpoint folder `checkpoints/step-000500/` holds `model.safetensors` (weights), `optimizer.safetensors`
(AdamW moments) and `state.safetensors` (RNG states), plus `trainer_state.json` (step, hyperparameters,
metrics). It is written under a temporary name and renamed into place, so a crash or a kill mid-write never
leaves a half checkpoint where resume would look. Nothing here unpickles: no `torch.load`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step-(\d{6,})$")


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and
             (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: str | Path, step: int, model, optimizer, rng: dict[str, torch.Tensor],
                    trainer_state: dict, keep_last: int = 3) -> Path:
    """Write checkpoint `step` atomically and keep only the newest `keep_last` ones."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    for stale in root.glob(".tmp-step-*"):  # left by a writer that was killed mid-write (one writer per run)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        weights.pop("lm_head.weight", None)  # tied: the embedding holds it
    save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    save_file({k: v.contiguous() for k, v in rng.items()}, tmp / "state.safetensors")
    (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
    (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "step": step}, indent=2))
    for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_weights(file: str | Path, model) -> None:
    """Load a safetensors weights file into `model` in place (a tied lm_head may be absent from the file)."""
    file = Path(file)
    weights = load_file(file)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"checkpoint {file.parent} does not fit this model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def load_checkpoint(path: str | Path, model, optimizer=None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore weights (and optimizer) in place; returns (trainer_state, rng tensors)."""
    path = Path(path)
    load_weights(path / "model.safetensors", model)
    if optimizer is not None:
        meta = json.loads((path / "optimizer.json").read_text())
        _load_optimizer(optimizer, load_file(path / "optimizer.safetensors"), meta)
    state = json.loads((path / "trainer_state.json").read_text())
    return state, load_file(path / "state.safetensors")
