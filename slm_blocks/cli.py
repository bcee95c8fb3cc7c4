"""Command line: `python -m slm_blocks train | generate | export | push ...` (see --help).

Training runs unchanged under `accelerate launch` or `torchrun` (DDP): rank 0 prepares the run folder,
logs, evaluates and saves; every rank trains on its own random windows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .training.config import TrainConfig


def _train_flag_help(f) -> str:
    meta = f.metadata
    default = meta.get("derived") if f.default is None else repr(f.default) if isinstance(f.default, str) else f.default
    return f"{meta.get('help', '')} (default: {default})".replace("%", "%%")


def add_train_flags(t: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, typed and explained by the field's metadata. Values stay text here:
    the job parser checks them and names the field (`train.lr: ...`); 'auto' empties an optional one."""
    import typing
    from dataclasses import fields

    g = t.add_argument_group("training settings (flags override --job)")
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        choices = [a for a in typing.get_args(hints[f.name]) if isinstance(a, str)]
        if hints[f.name] is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=_train_flag_help(f))
        elif choices:
            g.add_argument(flag, choices=choices, default=None, help=_train_flag_help(f))
        else:
            g.add_argument(flag, default=None, metavar=f.name.upper(), help=_train_flag_help(f))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m slm_blocks", description="Build, train and sample small LMs.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model (resumable)", description="Train a model. A job file (--job) "
                       "holds the whole job as JSON; flags given here override it. --print-job shows the result.")
    t.add_argument("--job", default=None, help="a job JSON file (spec, data, tokenizer, train, run_name)")
    t.add_argument("--print-job", action="store_true", help="print the resolved job as JSON and exit (reuse it "
                   "with --job)")
    arch = t.add_mutually_exclusive_group()
    arch.add_argument("--preset", default=None, help="preset name (see presets/), default tiny-char")
    arch.add_argument("--spec", default=None, help="a spec JSON file")
    t.add_argument("--data", nargs="*", default=None, help="text/jsonl/json/csv/parquet files or a dataset folder; "
                   "or builtin:stories / builtin:addition (default builtin:stories)")
    t.add_argument("--hub-dataset", default=None, help="a Hugging Face Hub dataset id (streamed)")
    t.add_argument("--hub-config", default=None)
    t.add_argument("--split", default=None)
    t.add_argument("--text-column", default=None)
    t.add_argument("--max-chars", default=None, help="cap on loaded text (default 20,000,000)")
    t.add_argument("--val-fraction", default=None, help="share held out for validation (default 0.1)")
    t.add_argument("--tokenizer", default=None, choices=["char", "byte", "bpe", "pretrained"])
    t.add_argument("--vocab-size", default=None, help="for --tokenizer bpe")
    t.add_argument("--tokenizer-name", default=None, help="for --tokenizer pretrained: Hub id or folder")
    t.add_argument("--run-name", default=None, help="the run's name (default: the --out folder's name)")
    t.add_argument("--init-from", default=None, help="start from trained weights (not available yet)")
    t.add_argument("--out", default=None, help="run folder (default runs/<run name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--extra-steps", default=None, help="with --resume: train this many steps more (the learning "
                   "rate continues from where it was)")
    t.add_argument("--no-mlflow", action="store_true", help="do not track this run in MLflow")
    add_train_flags(t)
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


def _data_overrides(args, data: dict) -> dict:
    """The data flags given, on top of the job file's data settings."""
    data = dict(data)
    if args.hub_dataset:
        data.update(source="hub", hub_id=args.hub_dataset, paths=[])
    elif args.data is not None:
        if not args.data or (len(args.data) == 1 and args.data[0].startswith("builtin:")):
            data.update(source="builtin", name=args.data[0].split(":", 1)[1] if args.data else "stories", paths=[])
        else:
            data.update(source="files", paths=[str(Path(p).resolve()) for p in args.data])
    for flag, key in (("hub_config", "hub_config"), ("split", "split"), ("text_column", "text_column"),
                      ("max_chars", "max_chars"), ("val_fraction", "val_fraction")):
        if getattr(args, flag) is not None:
            data[key] = getattr(args, flag)
    return data


def _train_overrides(args) -> dict:
    from dataclasses import fields

    out = {}
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            out[f.name] = None if isinstance(v, str) and v.strip().lower() == "auto" else v
    return out


def resolve_job(args):
    """The job the flags describe: the --job file (if any), then each flag given on top of it."""
    import json

    from .training.job import Job, JobError
    from .training.schema import Problem

    d: dict = {}
    if args.job:
        try:
            text = Path(args.job).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise JobError([Problem("--job", f"could not read {args.job} ({type(e).__name__})")]) from None
        try:
            d = json.loads(text)
        except ValueError as e:
            raise JobError([Problem("--job", f"{args.job} is not valid JSON ({str(e)[:120]})")]) from None
        if not isinstance(d, dict):
            raise JobError([Problem("--job", f"{args.job} must hold a JSON object")])
    if args.spec:
        d["spec"] = Path(args.spec).read_text(encoding="utf-8")
    elif args.preset:
        d["spec"] = args.preset
    d["data"] = _data_overrides(args, d.get("data") or {})
    tok = dict(d.get("tokenizer") or {})
    if args.tokenizer is not None:
        tok = {"kind": args.tokenizer}
    if args.vocab_size is not None:
        tok["vocab_size"] = args.vocab_size
    if args.tokenizer_name is not None:
        tok["name_or_path"] = args.tokenizer_name
    d["tokenizer"] = tok
    d["train"] = {**(d.get("train") or {}), **_train_overrides(args)}
    if args.run_name is not None:
        d["run_name"] = args.run_name
    elif args.out and "run_name" not in d:
        d["run_name"] = Path(args.out).name
    if args.init_from is not None:
        d["init_from"] = args.init_from
    return Job.from_dict(d, context="cli")


class _Printer:
    """The CLI's view of the events: a tqdm bar, eval lines, samples, warnings (rank 0 only)."""

    def __init__(self, main: bool):
        self.main, self.bar, self.done, self.error = main, None, None, None

    def __call__(self, event) -> None:
        from .training.events import (
            DoneEvent, ErrorEvent, EvalEvent, ReadyEvent, SampleEvent, StatusEvent, StepEvent, WarningEvent,
        )

        if isinstance(event, ErrorEvent):
            self.error = event.message
        if not self.main:
            return
        write = self.bar.write if self.bar is not None else print
        if isinstance(event, StatusEvent):
            print(f"{event.message}…", file=sys.stderr)
        elif isinstance(event, ReadyEvent):
            from tqdm import tqdm

            print(f"data {event.data}: {event.train_tokens:,} training tokens, vocabulary {event.vocab_size:,}, "
                  f"{event.params:,} parameters", file=sys.stderr)
            self.bar = tqdm(total=event.max_steps, initial=event.start_step, unit="step", dynamic_ncols=True)
        elif isinstance(event, StepEvent) and self.bar is not None:
            self.bar.n = event.step
            self.bar.set_postfix(loss=f"{event.loss:.3f}", lr=f"{event.lr:.2e}", tok_s=f"{event.tokens_per_s:,.0f}")
            self.bar.refresh()
        elif isinstance(event, EvalEvent):
            acc_text = f" accuracy {event.accuracy:.1%}" if event.accuracy is not None else ""
            write(f"step {event.step}: val loss {event.val_loss:.4f} · bits/char {event.bits_per_char:.3f}" + acc_text)
        elif isinstance(event, SampleEvent):
            write(f"--- sample at step {event.step} ---\n{event.text}\n---")
        elif isinstance(event, WarningEvent):
            write(f"warning: {event.message}")
        elif isinstance(event, DoneEvent):
            self.done = event

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train_command(args) -> int:
    import json

    from accelerate import Accelerator

    from .training.driver import device_of, drive

    if args.resume:
        if args.job or args.print_job:
            raise ValueError("--resume continues the run in --out as it was set up; --job and --print-job are for "
                             "new runs")
        if not args.out:
            raise ValueError("--resume needs --out, the run folder to continue")
        job, out, overrides = None, Path(args.out), _train_overrides(args)
        from .training.schema import parse_number

        ok, extra, why = parse_number(args.extra_steps, int, optional=True)
        if not ok or (extra is not None and extra < 0):
            raise ValueError(f"--extra-steps {why or 'must be ≥ 0'}")
    else:
        if args.extra_steps is not None:
            raise ValueError("--extra-steps only applies with --resume")
        job, overrides, extra = resolve_job(args), None, 0
        if args.print_job:
            print(job.to_json())
            d = job.train.derived(job.spec.max_seq_len)
            print("derived: " + ", ".join(f"{k}={v}" for k, v in d.__dict__.items()), file=sys.stderr)
            return 0
        out = Path(args.out) if args.out else Path("runs") / job.run_name
    acc = Accelerator(cpu=device_of(job, out, overrides) == "cpu")
    printer = _Printer(acc.is_main_process)
    try:
        code = drive(job, out, emit=printer, resume=args.resume, extra_steps=extra or 0, train_overrides=overrides,
                     accelerator=acc, track=not args.no_mlflow)
    finally:
        printer.close()
    if printer.error:
        print(f"error: {printer.error}", file=sys.stderr)
    elif acc.is_main_process and printer.done:
        print(f"done: {printer.done.message}; checkpoint {printer.done.checkpoint}")
        run_id = json.loads((out / "run.json").read_text()).get("mlflow_run_id") if not args.no_mlflow else None
        if run_id:
            from .training.tracking import tracking_uri

            print(f"MLflow run {run_id} in {tracking_uri(out.parent)}")
    return code


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
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
