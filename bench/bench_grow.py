"""Growing small models from a trained one, on tinyshakespeare: distillation and pruning + healing.

    python bench/bench_grow.py [--teacher-steps 1000] [--student-steps 600] [--heal-steps 200] [--readme]

(a) A student of about a quarter of tiny-char's parameters (d_model 64 instead of 128), trained --student-steps
    from scratch and, with the same seed, data order and steps, distilled from the trained tiny-char teacher
    (α, T from --alpha / --temperature). The claim: the distilled student ends with the lower held-out loss.
(b) The teacher pruned to about 70% of its parameters (`prune_run(target_params=...)`): its held-out loss right
    after pruning, after --heal-steps steps of healing (distillation from the unpruned teacher), and a model of
    the pruned shape trained from scratch for the same total steps (teacher steps + healing steps) and for the
    healing steps alone.

Every held-out loss is measured the same way at the end (`training.loop.evaluate`, --eval-batches windows of
the validation split), so the rows compare; forward tokens/s are ratios against the teacher measured in the
same call. Everything runs on one thread (the machines here are shared). --readme writes the tables into
README.md between the bench_grow markers; results also go to bench/results/grow.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from slm_blocks import estimate, load_preset  # noqa: E402
from slm_blocks.grow.prepare import drive  # noqa: E402
from slm_blocks.training.job import Job  # noqa: E402

START, END = "<!-- bench_grow:start -->", "<!-- bench_grow:end -->"
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def student_spec() -> dict:
    """tiny-char at half the width: about a quarter of its parameters."""
    spec = load_preset("tiny-char").to_dict()
    spec.update(name="tiny-char-quarter", d_model=64)
    spec["blocks"][2]["mlp"]["hidden"] = 256
    return spec


def train(out: Path, spec, steps: int, args, teacher: str | None = None) -> float:
    """Train one run (skipped when it already finished); returns its wall time."""
    from slm_blocks.training.checkpoint import latest_checkpoint

    if latest_checkpoint(out) is not None:
        return 0.0
    job = {"spec": spec, "data": {"source": "files", "paths": [str(DATA)]}, "tokenizer": {"kind": "char"},
           "run_name": out.name,
           "train": {"max_steps": steps, "batch_size": 12, "lr": args.lr, "seed": args.seed, "eval_every": 0,
                     "sample_tokens": 0, "checkpoint_every": 0, "device": "cpu", "precision": "fp32",
                     # the settings its published figures used (before Muon became the default)
                     "optimizer": "adamw", "weight_decay": 0.1, "decay": "cosine", "muon_momentum": 0.95,
                     "warmup_steps": min(100, steps // 10), "eval_batches": 20}}
    if teacher:
        job["teacher"] = {"source": teacher, "alpha": args.alpha, "temperature": args.temperature}
    t = time.perf_counter()
    errors = []
    code = drive(Job.from_dict(job), out, emit=lambda e: errors.append(e) if type(e).__name__ == "ErrorEvent"
                 else None, track=False)
    if code:
        raise SystemExit(f"{out.name} failed: {errors}")
    return time.perf_counter() - t


def heal(out: Path) -> float:
    from slm_blocks.training.checkpoint import latest_checkpoint

    if latest_checkpoint(out) is not None:
        return 0.0
    t = time.perf_counter()
    if drive(None, out, emit=lambda e: None, resume=True, track=False):
        raise SystemExit(f"healing {out.name} failed")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher-steps", type=int, default=1000)
    ap.add_argument("--student-steps", type=int, default=600)
    ap.add_argument("--heal-steps", type=int, default=200)
    ap.add_argument("--prune-to", type=float, default=0.7, help="share of the teacher's parameters to keep")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--eval-batches", type=int, default=50)
    ap.add_argument("--work", default=str(ROOT / "bench" / "results" / "grow-runs"))
    ap.add_argument("--readme", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "grow.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    from slm_blocks.grow.compare import forward_speed
    from slm_blocks.grow.prune import prune_run
    from slm_blocks.training.loop import evaluate, get_batch
    from slm_blocks.training.run import open_run

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tag = f"t{args.teacher_steps}-s{args.student_steps}-h{args.heal_steps}-a{args.alpha:g}-T{args.temperature:g}"
    teacher_dir = work / f"teacher-{args.teacher_steps}"
    times = {"teacher": train(teacher_dir, "tiny-char", args.teacher_steps, args)}
    print(f"teacher trained ({times['teacher']:.0f} s)", flush=True)
    times["scratch"] = train(work / f"student-scratch-{args.student_steps}", student_spec(), args.student_steps, args)
    times["distilled"] = train(work / f"student-distilled-{tag}", student_spec(), args.student_steps, args,
                               teacher=str(teacher_dir))
    print("students trained", flush=True)
    pruned_dir = work / f"pruned-{tag}-p{args.prune_to:g}"
    teacher_params = estimate(open_run(teacher_dir, load_data=False).spec).params
    if not pruned_dir.exists():
        r = prune_run(teacher_dir, pruned_dir, target_params=int(args.prune_to * teacher_params),
                      heal_steps=args.heal_steps, alpha=args.alpha, temperature=args.temperature)
        (work / f"{pruned_dir.name}.json").write_text(json.dumps(r.to_dict(), indent=2))
    pruned_info = json.loads((work / f"{pruned_dir.name}.json").read_text())
    small_spec = open_run(pruned_dir, load_data=False).spec
    times["heal"] = heal(pruned_dir)
    same_total = args.teacher_steps + args.heal_steps
    times["same-size scratch"] = train(work / f"pruned-shape-scratch-{same_total}-p{args.prune_to:g}",
                                       small_spec.to_dict(), same_total, args)
    times["same-size scratch, healing budget"] = train(work / f"pruned-shape-scratch-{args.heal_steps}-"
                                                       f"p{args.prune_to:g}", small_spec.to_dict(), args.heal_steps, args)
    print("pruning done", flush=True)

    # one evaluation for every model: the teacher run's validation windows
    ref = open_run(teacher_dir)
    ref.train_config.eval_batches = args.eval_batches
    device = torch.device("cpu")

    def measure(run_dir: Path, initial: bool = False):
        r = open_run(run_dir, load_data=False)
        assert r.tokenizer.get_vocab() == ref.tokenizer.get_vocab(), f"{run_dir.name}: another vocabulary"
        model = r.new_model().eval() if initial else r.load_model()
        ev = evaluate(model, ref, device)
        return model, estimate(r.spec).params, ev.val_loss, ev.bits_per_char

    rows_a, rows_b = [], []
    t_model, t_params, t_loss, t_bpc = measure(teacher_dir)
    for name, d, steps in (("tiny-char teacher", teacher_dir, args.teacher_steps),
                           ("student from scratch", work / f"student-scratch-{args.student_steps}", args.student_steps),
                           (f"student distilled (α {args.alpha:g}, T {args.temperature:g})",
                            work / f"student-distilled-{tag}", args.student_steps)):
        _, p, loss, bpc = measure(d)
        rows_a.append({"model": name, "parameters": p, "steps": steps, "held-out loss": loss, "bits/char": bpc})
    x, _ = get_batch(ref.val_tokens, 12, ref.seq_len, torch.Generator().manual_seed(0))
    models_b = [t_model]
    rows_b.append({"model": "tiny-char teacher", "parameters": t_params, "steps": args.teacher_steps,
                   "held-out loss": t_loss, "bits/char": t_bpc})
    for name, d, steps, initial in (
            ("pruned, right after pruning", pruned_dir, args.teacher_steps, True),
            (f"pruned + {args.heal_steps} healing steps", pruned_dir, same_total, False),
            (f"same shape from scratch, {same_total} steps", work / f"pruned-shape-scratch-{same_total}-"
             f"p{args.prune_to:g}", same_total, False),
            (f"same shape from scratch, {args.heal_steps} steps (the healing budget alone)",
             work / f"pruned-shape-scratch-{args.heal_steps}-p{args.prune_to:g}", args.heal_steps, False)):
        model, p, loss, bpc = measure(d, initial)
        models_b.append(model)
        rows_b.append({"model": name, "parameters": p, "steps": steps, "held-out loss": loss, "bits/char": bpc})
    speeds = forward_speed(models_b, x, rounds=21)
    for row, s in zip(rows_b, speeds):
        row["forward speed vs teacher"] = s / speeds[0]

    def table(rows, extra=()):
        cols = ["model", "parameters", "steps", "held-out loss", "bits/char", *extra]
        out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        for r in rows:
            cells = [r["model"], f"{r['parameters']:,} ({r['parameters'] / rows[0]['parameters']:.2f}×)",
                     f"{r['steps']:,}", f"{r['held-out loss']:.4f}", f"{r['bits/char']:.3f}"]
            cells += [f"{r[c]:.2f}×" for c in extra]
            out.append("| " + " | ".join(cells) + " |")
        return "\n".join(out)

    info = (f"{platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}; tinyshakespeare, "
            f"char tokenizer, batch 12 × {ref.seq_len} tokens, lr {args.lr:g}, seed {args.seed}; held-out loss on "
            f"{args.eval_batches} validation batches")
    md = (f"(a) distillation: a student with {rows_a[1]['parameters'] / rows_a[0]['parameters']:.0%} of the "
          f"teacher's parameters, {args.student_steps} steps, same seed and data order\n\n" + table(rows_a)
          + f"\n\n(b) pruning tiny-char to {args.prune_to:.0%} of its parameters ({pruned_info['plan']}), then "
          f"healing by distillation from the unpruned model (α {args.alpha:g}, T {args.temperature:g}, peak lr "
          f"{open_run(pruned_dir, load_data=False).train_config.peak_lr():g}); 'steps' counts "
          "every step that shaped the weights (the teacher's included)\n\n" + table(rows_b, ("forward speed vs teacher",)))
    print(info + "\n\n" + md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "args": vars(args), "distill": rows_a, "prune": rows_b,
                               "prune_result": pruned_info, "wall_s": times}, indent=2, default=str))
    verdict_a = rows_a[2]["held-out loss"] < rows_a[1]["held-out loss"]
    print(f"\n(a) distilled student lower than scratch: {verdict_a}; (b) healed vs same-size scratch: "
          f"{rows_b[2]['held-out loss']:.4f} vs {rows_b[3]['held-out loss']:.4f}")
    if args.readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        if START not in text or END not in text:
            raise SystemExit(f"README.md has no {START} ... {END} markers")
        head, rest = text.split(START, 1)
        readme.write_text(head + START + "\n" + info + ":\n\n" + md + "\n" + END + rest.split(END, 1)[1])
    assert math.isfinite(rows_a[2]["held-out loss"])


if __name__ == "__main__":
    main()
