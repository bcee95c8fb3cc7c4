"""Training time per step of every preset, as the presets' descriptions state it.

    python bench/bench_presets.py [--rounds 3] [--steps 5] [--threads 1] [--presets llama mamba2 ...]

Each preset is built with a 65-token character vocabulary (tinyshakespeare's), trained with AdamW + clipping at
batch 12 on its own context length in fp32; presets alternate within each round (rotated order) and the table
shows medians, as ms per step and as a ratio to tiny-char measured in the same run (this machine is shared and
noisy: the ratios carry over, absolute times do not). Results go to bench/results/presets.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from slm_blocks import build_model, estimate, list_presets, load_preset  # noqa: E402

BATCH, VOCAB = 12, 65


def make_step(name: str):
    spec = load_preset(name).copy(vocab_size=VOCAB)
    torch.manual_seed(0)
    model = build_model(spec).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    x = torch.randint(0, VOCAB, (BATCH, spec.max_seq_len))

    def step():
        loss = model(x, labels=x, use_cache=False).loss  # (the model shifts the labels itself)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return spec, step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--presets", nargs="*", help="only these (tiny-char, the reference, is always measured)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in list_presets() if not args.presets or n == "tiny-char" or n in args.presets]
    steps = {n: make_step(n) for n in names}
    for _, step in steps.values():
        step()  # warm up (allocations, first-call costs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            _, step = steps[n]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[n].append((time.perf_counter() - t0) / args.steps)
    ref = statistics.median(times["tiny-char"])
    rows = []
    print(f"{platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, batch {BATCH}, fp32, "
          f"{VOCAB}-token vocabulary; median of {args.rounds} rotated rounds of {args.steps} steps\n")
    print("| preset | parameters | context | ms/step | × tiny-char | 1,000 steps |")
    print("|---|---:|---:|---:|---:|---:|")
    for n in names:
        spec, _ = steps[n]
        ms = statistics.median(times[n]) * 1000
        rows.append({"preset": n, "params": estimate(spec).params, "context": spec.max_seq_len, "ms_per_step": ms,
                     "ratio": ms / 1000 / ref})
        print(f"| {n} | {estimate(spec).params:,} | {spec.max_seq_len} | {ms:,.0f} | {ms / 1000 / ref:.1f}× | "
              f"{ms:,.0f} s ≈ {ms / 60:.1f} min |")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "presets.json").write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
