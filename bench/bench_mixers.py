"""What each new family buys at this size: training and generation speed against the same model in its native
transformers class, and held-out loss after an equal time budget against `llama`.

    python bench/bench_mixers.py [--rounds 3] [--steps 2] [--new 64] [--budget 60] [--threads 1] [--skip-quality]
                                 [--presets mixtral qwen3-moe ...]

Speed: every new preset (mixtral, qwen3-moe, mamba2, lfm2, bamba) is built with tinyshakespeare's 65-character
vocabulary, copied into its native class (sharing/native.py), and both are timed in alternation, rotated each
round, medians shown: a training step (forward, backward, AdamW) at batch 4 on 256 tokens, and greedy generation of
`--new` tokens from an 8-token prompt (ours: stream_tokens with its one-token step; theirs: generate() with its
cache). Ratios within one run carry over to other machines; absolute figures do not.

Quality: each new preset and `llama` train for `--budget` seconds of wall time on tinyshakespeare (char tokenizer,
batch 12, lr 1e-3, the project's own training loop), then report the held-out loss. One run after another, so a
busy machine can favour whichever ran while it was quiet: rerun before trusting a small gap.
Results go to bench/results/mixers.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from slm_blocks import build_model, estimate, load_preset  # noqa: E402
from slm_blocks.model.generation import SamplingConfig, stream_tokens  # noqa: E402
from slm_blocks.sharing.native import to_native  # noqa: E402

PRESETS = ["mixtral", "qwen3-moe", "mamba2", "lfm2", "bamba"]
VOCAB, BATCH, T = 65, 4, 256
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def train_step(model, x):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        model(input_ids=x, labels=x, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def speed(args) -> dict:
    rows = {}
    for name in args.presets:
        torch.manual_seed(0)
        ours = build_model(load_preset(name).copy(vocab_size=VOCAB))
        theirs = to_native(ours).train()
        ours.train()
        x = torch.randint(0, VOCAB, (BATCH, T))
        prompt = torch.randint(0, VOCAB, (1, 8))
        runs = {"ours_train": train_step(ours, x), "native_train": train_step(theirs, x)}
        greedy = SamplingConfig(max_new_tokens=args.new, temperature=0)
        hf = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=args.new, min_new_tokens=args.new,
                  do_sample=False, pad_token_id=0)

        def ours_generate():
            list(stream_tokens(ours.eval(), prompt, greedy))

        def native_generate():
            with torch.inference_mode():
                theirs.eval().generate(prompt, **hf)
        runs.update(ours_generate=ours_generate, native_generate=native_generate)
        for run in runs.values():
            run()  # warm up
            ours.train(), theirs.train()
        times: dict[str, list[float]] = {k: [] for k in runs}
        keys = list(runs)
        for r in range(args.rounds):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                n = args.steps if k.endswith("train") else 1
                t0 = time.perf_counter()
                for _ in range(n):
                    runs[k]()
                times[k].append((time.perf_counter() - t0) / n)
                ours.train(), theirs.train()
        med = {k: statistics.median(v) for k, v in times.items()}
        rows[name] = {"params": estimate(ours.config.model_spec()).params, "native": type(theirs).__name__,
                      "train_tokens_per_s": BATCH * T / med["ours_train"],
                      "native_train_tokens_per_s": BATCH * T / med["native_train"],
                      "generate_tokens_per_s": args.new / med["ours_generate"],
                      "native_generate_tokens_per_s": args.new / med["native_generate"]}
        print(name, {k: round(v) if isinstance(v, float) else v for k, v in rows[name].items()}, flush=True)
    return rows


def quality(args) -> dict:
    from slm_blocks.training import train
    from slm_blocks.training.config import TrainConfig
    from slm_blocks.training.data import DataConfig
    from slm_blocks.training.events import DoneEvent
    from slm_blocks.training.loop import evaluate
    from slm_blocks.training.run import TokenizerConfig, prepare_run

    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-mixers-") as d:
        for name in ["llama"] + args.presets:
            cfg = TrainConfig(max_steps=10**6, max_time=args.budget, batch_size=12, lr=1e-3, warmup_steps=20,
                              eval_every=0, eval_batches=20, sample_tokens=0, checkpoint_every=0, device="cpu",
                              precision="fp32", seed=1)
            run = prepare_run(Path(d) / name, load_preset(name), DataConfig(source="files", paths=[str(SHAKESPEARE)]),
                              TokenizerConfig("char"), cfg)
            steps = next(e.step for e in train(run) if isinstance(e, DoneEvent))
            last = evaluate(run.load_model(), run, torch.device("cpu")).val_loss  # the same held-out windows
            out[name] = {"val_loss": last, "steps": steps}
            print(name, out[name], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--budget", type=float, default=180.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--presets", nargs="*", default=PRESETS, choices=PRESETS, help="only these (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = speed(args)
    loss = {} if args.skip_quality else quality(args)
    print(f"\n{platform.machine()}, {args.threads} thread(s), torch {torch.__version__}; training batch {BATCH} × {T} "
          f"fp32; generation {args.new} greedy tokens; held-out loss after {args.budget:g} s on tinyshakespeare\n")
    print("| preset | parameters | native class | train tok/s (native) | generate tok/s (native) | held-out loss "
          "(steps) |")
    print("|---|---:|---|---:|---:|---:|")
    for name in (["llama"] if loss else []) + args.presets:
        r, q = rows.get(name), loss.get(name, {})
        lq = f"{q['val_loss']:.3f} ({q['steps']})" if q.get("val_loss") is not None else "–"
        if r is None:
            params = estimate(load_preset(name).copy(vocab_size=VOCAB)).params
            print(f"| {name} | {params:,} | LlamaForCausalLM | – | – | {lq} |")
            continue
        print(f"| {name} | {r['params']:,} | {r['native']} | {r['train_tokens_per_s']:,.0f} "
              f"({r['native_train_tokens_per_s']:,.0f}) | {r['generate_tokens_per_s']:,.0f} "
              f"({r['native_generate_tokens_per_s']:,.0f}) | {lq} |")
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "mixers.json").write_text(json.dumps({"threads": args.threads, "speed": rows, "quality": loss,
                                                 "budget_s": args.budget}, indent=2))


if __name__ == "__main__":
    main()
