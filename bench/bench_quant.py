"""Size, speed and quality of fp32 / bf16 / int8 / int4 / GGUF q8_0 of the same trained weights.

    python bench/bench_quant.py [--run RUN_DIR] [--steps 1500] [--rounds 5] [--tokens 64] [--readme]

Without --run it first trains tiny-char on tinyshakespeare (--steps, into bench/results/quant-run). Sizes,
held-out loss, bits per character, greedy text and speed come from slm_blocks.compress.table.compare_variants:
speed on the Generate tab's path (stream_tokens, --threads 1), in --rounds rounds, every variant once per round
in a rotated order, the median reported with its ratio against fp32 of the same run. The GGUF row's speed is
llama.cpp's (llama-cpp-python) at the same thread count, when it is installed. --readme writes the table into README.md between the
bench_quant markers. Results also go to bench/results/quant.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from slm_blocks.compress.table import compare_variants, table_markdown  # noqa: E402

START, END = "<!-- bench_quant:start -->", "<!-- bench_quant:end -->"


def train_reference(out: Path, steps: int) -> Path:
    from slm_blocks import load_preset
    from slm_blocks.training.config import TrainConfig
    from slm_blocks.training.data import DataConfig
    from slm_blocks.training.loop import train
    from slm_blocks.training.run import TokenizerConfig, prepare_run

    if (out / "checkpoints").is_dir():
        return out
    data = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
    run = prepare_run(out, load_preset("tiny-char"), DataConfig(source="files", paths=[str(data)]),
                      TokenizerConfig("char"), TrainConfig(max_steps=steps, batch_size=12, lr=1e-3, eval_every=steps,
                                                           sample_tokens=0, device="cpu", precision="fp32",
                                                           optimizer="adamw", weight_decay=0.1, decay="cosine",
                                                           warmup_steps=min(100, steps // 10), eval_batches=20))
    for _ in train(run):
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="a trained run folder (default: train tiny-char first)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt", default="ROMEO:\n")
    ap.add_argument("--threads", type=int, default=1, help="decode threads (the Generate tab uses 1)")
    ap.add_argument("--readme", action="store_true", help="write the table into README.md")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quant.json"))
    args = ap.parse_args()

    from slm_blocks.training.run import open_run

    run_dir = Path(args.run) if args.run else train_reference(ROOT / "bench" / "results" / "quant-run", args.steps)
    run = open_run(run_dir)
    model = run.load_model()
    # speed: every variant once per round in a rotated order, median over rounds (compare_variants)
    rows = compare_variants(model, run.tokenizer, run.val_tokens, run.tokens_per_char, prompt=args.prompt,
                            seq_len=run.seq_len, n_tokens=args.tokens, repeats=args.rounds, windows=64,
                            threads=args.threads)
    info = (f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch "
            f"{torch.__version__}; run `{run_dir.name}` ({run.spec.summary()}), held-out loss on 64 windows of "
            f"{run.seq_len} tokens, {args.tokens} greedy tokens from {args.prompt!r}, speed = median of "
            f"{args.rounds} rotated rounds")
    md = table_markdown(rows, text_chars=48)
    print(info + "\n\n" + md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"info": info, "rows": [r.to_dict() for r in rows]}, indent=2))
    if args.readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        if START not in text or END not in text:
            raise SystemExit(f"README.md has no {START} ... {END} markers")
        head, rest = text.split(START, 1)
        readme.write_text(head + START + "\n" + info + ":\n\n" + md + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
