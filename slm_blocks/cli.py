"""Command line: `python -m slm_blocks train | generate | export | push ...` (see --help).

Training runs unchanged under `accelerate launch` or `torchrun` (DDP): rank 0 prepares the run folder,
logs, evaluates and saves; every rank trains on its own random windows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .training.config import TrainConfig

TRAIN_FLAGS = {  # --flag -> TrainConfig field, for the hyperparameters a user may override
    "max_steps": int, "max_time": float, "batch_size": int, "seq_len": int, "lr": float, "min_lr_ratio": float,
    "warmup_steps": int, "weight_decay": float, "grad_clip": float, "grad_accum": int, "precision": str,
    "device": str, "seed": int, "log_every": int, "eval_every": int, "eval_batches": int, "sample_tokens": int,
    "checkpoint_every": int, "keep_checkpoints": int, "early_stop_patience": int, "compile": bool,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slm_blocks", description="Build, train and sample small LMs.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model (resumable)")
    arch = t.add_mutually_exclusive_group()
    arch.add_argument("--preset", default=None, help="preset name (see presets/), default tiny-char")
    arch.add_argument("--spec", default=None, help="a spec JSON file")
    t.add_argument("--data", nargs="*", default=[], help="text/jsonl/json/csv/parquet files or a dataset folder; "
                   "or builtin:stories / builtin:addition (default builtin:stories)")
    t.add_argument("--hub-dataset", default=None, help="a Hugging Face Hub dataset id (streamed)")
    t.add_argument("--hub-config", default=None)
    t.add_argument("--split", default="train")
    t.add_argument("--text-column", default=None)
    t.add_argument("--max-chars", type=int, default=20_000_000)
    t.add_argument("--tokenizer", default="char", choices=["char", "byte", "bpe", "pretrained"])
    t.add_argument("--vocab-size", type=int, default=None, help="for --tokenizer bpe")
    t.add_argument("--tokenizer-name", default=None, help="for --tokenizer pretrained: Hub id or folder")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--no-mlflow", action="store_true", help="do not track this run in MLflow")
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    for name, typ in TRAIN_FLAGS.items():
        if typ is bool:
            continue
        t.add_argument("--" + name.replace("_", "-"), type=typ, default=None)
    g = sub.add_parser("generate", help="sample text from a trained run")
    g.add_argument("run_dir")
    g.add_argument("--prompt", default="\n")
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--quant", default="fp32", choices=["fp32", "bf16", "int8", "int4"],
                   help="weights to generate with (int8 / int4: torchao weight-only)")
    g.add_argument("--group-size", type=int, default=None, help="int8/int4 group size (default: int8 per row, int4 32)")
    e = sub.add_parser("export", help="export a run as a Hugging Face folder or a GGUF file (verified before it is "
                       "written)")
    e.add_argument("run_dir")
    e.add_argument("--out", required=True)
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--format", default="hf", choices=["hf", "gguf"],
                   help="hf: a transformers folder; gguf: one file for llama.cpp / Ollama")
    e.add_argument("--quant", default=None, help="hf: fp32 (default), int8 or int4; gguf: q8_0 (default) or f16")
    e.add_argument("--group-size", type=int, default=None, help="hf int8/int4 group size")
    h = sub.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    h.add_argument("export_dir")
    h.add_argument("--repo-id", required=True, help="'name' or 'user/name'")
    h.add_argument("--public", action="store_true", help="make the repository public (default private)")
    return p


def export_command(args) -> int:
    from .sharing.export import export_run

    if args.format == "gguf" or args.quant not in (None, "fp32"):
        from .compress.cli import export_compressed

        return export_compressed(args)
    r = export_run(args.run_dir, args.out, overwrite=args.overwrite)
    kind = "native transformers class" if r.native else f"custom code (trust_remote_code=True): {r.why_not_native}"
    print(f"exported {r.model_class} ({kind}) to {r.out_dir}\nverified in a fresh process: max |Δlogits| "
          f"{r.max_abs_diff:.2e}, greedy continuation {'identical' if r.greedy_match else 'different'}")
    return 0


def push_command(args) -> int:
    from huggingface_hub import get_token

    from .sharing.hub import push_to_hub

    r = push_to_hub(args.export_dir, args.repo_id, get_token(), private=not args.public)
    print(f"published {r.repo_id} ({'private' if r.private else 'public'}): {r.url}")
    return 0


def _data_config(args):
    from .training.data import DataConfig

    common = dict(text_column=args.text_column, max_chars=args.max_chars)
    if args.hub_dataset:
        return DataConfig(source="hub", hub_id=args.hub_dataset, hub_config=args.hub_config, split=args.split,
                          **common)
    if not args.data or (len(args.data) == 1 and args.data[0].startswith("builtin:")):
        name = args.data[0].split(":", 1)[1] if args.data else "stories"
        return DataConfig(source="builtin", name=name, **common)
    return DataConfig(source="files", paths=[str(Path(p).resolve()) for p in args.data], **common)


def train_command(args) -> int:
    from accelerate import Accelerator
    from tqdm import tqdm

    from . import ModelSpec, load_preset
    from .training.run import TokenizerConfig, open_run, prepare_run
    from .training.loop import DoneEvent, EvalEvent, SampleEvent, StepEvent, WarningEvent, train

    overrides = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    acc = Accelerator(cpu=overrides.get("device") == "cpu")
    out = Path(args.out)
    if acc.is_main_process and not args.resume:
        spec = ModelSpec.from_json(Path(args.spec).read_text()) if args.spec else load_preset(args.preset or "tiny-char")
        prepare_run(out, spec, _data_config(args), TokenizerConfig(args.tokenizer, args.vocab_size, args.tokenizer_name),
                    TrainConfig(**overrides))
    acc.wait_for_everyone()
    run = open_run(out, train_overrides=overrides if args.resume else None)
    main = acc.is_main_process
    if main and args.resume and overrides:
        run.save()  # the new limits (e.g. more steps) are the run's settings from now on
    tracker = None
    if main and not args.no_mlflow:
        from .training.tracking import Tracker

        tracker = Tracker(run)
    bar = tqdm(total=run.train_config.max_steps, disable=not main, unit="step", dynamic_ncols=True)
    done = None
    try:
        for event in train(run, accelerator=acc):
            if tracker:
                tracker.on_event(event)
            if isinstance(event, StepEvent):
                bar.n = event.step
                bar.set_postfix(loss=f"{event.loss:.3f}", lr=f"{event.lr:.2e}", tok_s=f"{event.tokens_per_s:,.0f}")
                bar.refresh()
            elif isinstance(event, EvalEvent):
                acc_text = f" accuracy {event.accuracy:.1%}" if event.accuracy is not None else ""
                bar.write(f"step {event.step}: val loss {event.val_loss:.4f} · bits/char {event.bits_per_char:.3f}"
                          + acc_text)
            elif isinstance(event, SampleEvent):
                bar.write(f"--- sample at step {event.step} ---\n{event.text}\n---")
            elif isinstance(event, WarningEvent):
                bar.write(f"warning: {event.message}")
            elif isinstance(event, DoneEvent):
                done = event
    except BaseException as e:
        if tracker:
            tracker.fail(f"{type(e).__name__}: {e}")
        raise
    finally:
        bar.close()
    if main and done:
        print(f"done: {done.message}; checkpoint {done.checkpoint}")
        if tracker:
            print(f"MLflow run {tracker.run_id} in {tracker.uri}")
    return 0 if done and done.reason != "error" else 1


def generate_command(args) -> int:
    from .model.generation import SamplingConfig, stream_text
    from .training.run import open_run

    run = open_run(args.run_dir, load_data=False)
    model = run.load_model()
    if args.quant != "fp32":
        from .compress.quantize import quantize_model

        model = quantize_model(model, args.quant, args.group_size)
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
    shown = ""
    sys.stdout.write(args.prompt)
    for text in stream_text(model, run.tokenizer, args.prompt, cfg):
        sys.stdout.write(text[len(shown):])
        sys.stdout.flush()
        shown = text
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"train": train_command, "generate": generate_command, "export": export_command,
                "push": push_command}
    try:
        return commands[args.command](args)
    except (ValueError, RuntimeError, FileNotFoundError, FileExistsError) as e:  # a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
