"""Training tokens/s of tiny-char through our loop vs the same architecture in plain PyTorch.

    python bench/bench_train.py [--rounds 3] [--steps 100] [--no-compile]

"ours" is the real `slm_blocks.training.loop.train` generator (accelerate, events, clipping, schedule) on the
block-built model; "plain" is a nanoGPT-style GPT written below in plain PyTorch (fused qkv, SDPA, AdamW)
with the same shapes, batch (12 x 64), optimizer settings and clipping. Variants alternate within each
round (rotated order) and the table shows medians, because this machine is noisy: compare ratios, not
absolute numbers. MFU divides achieved training FLOP/s (estimate().flops_per_token_train x tokens/s) by
the matmul peak this script measures itself. Results go to bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from slm_blocks import estimate, load_preset  # noqa: E402
from slm_blocks.training.data import DataConfig  # noqa: E402
from slm_blocks.training.run import TokenizerConfig, open_run, prepare_run  # noqa: E402
from slm_blocks.training.config import TrainConfig  # noqa: E402
from slm_blocks.training.loop import StepEvent, get_batch, lr_at, train  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


# ----------------------------------------------------------------------------- the plain PyTorch reference


class Block(nn.Module):
    def __init__(self, C: int, H: int):
        super().__init__()
        self.H = H
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class PlainGPT(nn.Module):
    def __init__(self, V: int, C: int, T: int, L: int, H: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block(C, H) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        self.head.weight = self.wte.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def time_plain(run, cfg: TrainConfig, precision: str, compile_: bool) -> float:
    torch.manual_seed(cfg.seed)
    s = run.spec
    model = PlainGPT(s.vocab_size, s.d_model, s.max_seq_len, 4, 4)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=cfg.peak_lr(), betas=(cfg.beta1, cfg.beta2))
    fwd = torch.compile(model) if compile_ else model
    gen = torch.Generator().manual_seed(1)
    windows, t0 = [], time.perf_counter()
    for step in range(cfg.max_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        x, y = get_batch(run.train_tokens, cfg.batch_size, run.seq_len, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(fwd(x).flatten(0, 1).float(), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % cfg.log_every == 0:
            now = time.perf_counter()
            windows.append(cfg.log_every * cfg.batch_size * run.seq_len / (now - t0))
            t0 = now
    return statistics.median(windows[1:])  # the first window holds warm-up (and compilation)


def time_ours(run, precision: str, compile_: bool) -> float:
    shutil.rmtree(run.dir / "checkpoints", ignore_errors=True)  # start fresh, never resume
    run.train_config.precision, run.train_config.compile = precision, compile_
    windows = [e.tokens_per_s for e in train(run) if isinstance(e, StepEvent)]
    return statistics.median(windows[1:])


def matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n ** 3 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100, help="timed steps per measurement (+ one warm-up window)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train.json"))
    args = ap.parse_args()

    log_every = 25
    cfg = TrainConfig(max_steps=args.steps + log_every, batch_size=12, lr=1e-3, warmup_steps=10, eval_every=0,
                      optimizer="adamw", weight_decay=0.1, decay="cosine", sample_tokens=0, checkpoint_every=0,
                      log_every=log_every, precision="fp32")
    tmp = Path(tempfile.mkdtemp(prefix="slm-bench-"))
    prepare_run(tmp / "run", load_preset("tiny-char"), DataConfig(source="files", paths=[str(DATA)]),
                TokenizerConfig("char"), cfg)
    run = open_run(tmp / "run")
    variants = {"ours fp32": lambda: time_ours(run, "fp32", False),
                "plain fp32": lambda: time_plain(run, cfg, "fp32", False),
                "ours bf16": lambda: time_ours(run, "bf16", False),
                "plain bf16": lambda: time_plain(run, cfg, "bf16", False)}
    results: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            results[name].append(variants[name]())
            print(f"round {r + 1}: {name:<12} {results[name][-1]:>9,.0f} tokens/s", flush=True)
    if not args.no_compile:  # compiling costs tens of seconds: once per side
        results["ours compile"] = [time_ours(run, "fp32", True)]
        results["plain compile"] = [time_plain(run, cfg, "fp32", True)]

    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    flops = estimate(run.spec, batch_size=cfg.batch_size, seq_len=run.seq_len).flops_per_token_train
    med = {k: statistics.median(v) for k, v in results.items()}
    rows = []
    for name, tps in med.items():
        side, mode = name.split()
        ref = med.get(f"plain {mode}")
        mfu = tps * flops / peak["bf16" if mode == "bf16" else "fp32"]
        rows.append({"variant": name, "tokens_per_s": round(tps), "ms_per_step": round(1000 * 12 * 64 / tps, 1),
                     "vs_plain_same_mode": round(tps / ref, 3) if ref else None,
                     "vs_plain_fp32": round(tps / med["plain fp32"], 3), "mfu": round(mfu, 4)})
    print("\n| variant | tokens/s | ms/step | vs plain (same mode) | vs plain fp32 | MFU |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['tokens_per_s']:,} | {r['ms_per_step']} | {r['vs_plain_same_mode']}x | "
              f"{r['vs_plain_fp32']}x | {r['mfu']:.1%} |")
    print(f"\nmatmul peak measured here: fp32 {peak['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s; "
          f"{flops:,} training FLOPs/token")
    out = {"preset": "tiny-char", "batch_size": 12, "seq_len": run.seq_len, "rounds": args.rounds,
           "steps_per_measurement": args.steps, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine(), "peak_flops": peak,
           "train_flops_per_token": flops, "raw": results, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
