"""Before and after: the models of a grown run side by side on the run's own held-out text.

    rows = grow_table("runs/student")     # teacher (distillation), start (the weights it started from),
                                          # now (its latest checkpoint): parameters, held-out loss, tokens/s

Losses come from `training.loop.evaluate` on the run's validation windows (the same windows for every row),
and speed is forward tokens/s on one batch of them, the rows timed in alternation and reported with the ratio
to the first row (this machine is shared and noisy: only ratios within one call mean anything).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch

from ..model.estimate import estimate
from ..training.distill import Teacher
from ..training.loop import evaluate, get_batch
from ..training.run import INIT_WEIGHTS, open_run


def forward_speed(models: list, x: torch.Tensor, rounds: int = 3) -> list[float]:
    """Forward tokens/s of each model on batch x: every model once per round, the order rotated from round to
    round (a busy machine slows whoever runs at the wrong moment), medians over the rounds."""
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for m in models:  # warm-up
            m(input_ids=x, use_cache=False)
        for r in range(rounds):
            for k in range(len(models)):
                i = (k + r) % len(models)
                t = time.perf_counter()
                models[i](input_ids=x, use_cache=False)
                times[i].append(time.perf_counter() - t)
    return [x.numel() / max(statistics.median(ts), 1e-9) for ts in times]


def grow_table(run_dir: str | Path, rounds: int = 3) -> list[dict]:
    """One row per model of the grown run (teacher, start, now); see the module docstring."""
    run = open_run(run_dir)
    meta = run.meta
    device = torch.device("cpu")
    rows = []
    teacher = Teacher.from_run(run.dir, device)
    if teacher is not None:
        t = meta.get("teacher", {})
        rows.append({"model": f"teacher: {t.get('source', 'teacher')}", "spec": teacher.model.config.model_spec(),
                     "model_obj": teacher.model})
    if (run.dir / INIT_WEIGHTS).is_file():
        start = meta.get("init_from", {})
        what = "pruned, before healing" if start.get("kind") == "pruned" else f"start: {start.get('source', 'init')}"
        with torch.random.fork_rng(devices=[]):
            rows.append({"model": what, "spec": run.spec, "model_obj": run.new_model().eval()})
    ckpt = run.latest_checkpoint()
    if ckpt is not None:
        step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
        rows.append({"model": f"{run.dir.name} after {step} steps", "spec": run.spec, "model_obj": run.load_model()})
    if not rows:
        return []
    cfg = run.train_config
    x, _ = get_batch(run.val_tokens, cfg.batch_size, run.seq_len, torch.Generator().manual_seed(cfg.seed + 7))
    speeds = forward_speed([r["model_obj"] for r in rows], x, rounds)
    out = []
    for r, tps in zip(rows, speeds):
        ev = evaluate(r["model_obj"], run, device)
        out.append({"model": r["model"], "parameters": estimate(r["spec"]).params,
                    "held-out loss": round(ev.val_loss, 4), "bits/char": round(ev.bits_per_char, 4)
                    if math.isfinite(ev.bits_per_char) else None,
                    "tokens/s": round(tps), "speed vs first": round(tps / speeds[0], 2)})
    return out
