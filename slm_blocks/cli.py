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
    default = meta.get("empty") if f.default is None else repr(f.default) if isinstance(f.default, str) else f.default
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
    t.add_argument("--init-from", default=None, help="start from trained weights: a run folder, an exported or "
                   "native transformers folder (GPT-2, Llama, Mistral, Qwen3, Gemma 3) or a Hub id; the run keeps its "
                   "architecture and tokenizer (--preset / --spec and the tokenizer flags are not used)")
    t.add_argument("--teacher", default=None, help="distill from this model (run folder, exported folder or Hub id); "
                   "the student uses the teacher's tokenizer")
    t.add_argument("--distill-alpha", default=None, help="with --teacher: share of the loss that follows the teacher "
                   "(default 0.5; 0 = plain training)")
    t.add_argument("--distill-temperature", default=None, help="with --teacher: softens both distributions before "
                   "they are compared (default 2)")
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
    pr = sub.add_parser("prune", help="make a smaller run from a trained one (drop layers, MLP neurons, heads), "
                        "then heal it by distilling from the original", description="Prune a trained run into a new, "
                        "smaller run (see slm_blocks/grow/prune.py). Give a parameter target, or any of --drop-layers "
                        "/ --mlp-keep / --heads-keep.")
    pr.add_argument("run_dir")
    pr.add_argument("--out", required=True, help="the new run folder")
    pr.add_argument("--target-params", type=int, default=None, help="aim at this many parameters: tries depth and "
                    "head counts, sizes the MLP to fit, keeps the shape with the lowest calibration loss")
    pr.add_argument("--drop-layers", type=int, default=0, help="drop this many of the least important layers")
    pr.add_argument("--mlp-keep", type=float, default=1.0, help="share of each MLP's neurons to keep, e.g. 0.5")
    pr.add_argument("--heads-keep", type=int, default=None, help="attention heads to keep per layer (GQA: whole "
                    "key/value groups)")
    pr.add_argument("--heal-steps", type=int, default=None, help="steps of the healing run (default 200)")
    pr.add_argument("--heal", action="store_true", help="heal right away: distill from the unpruned run for "
                    "--heal-steps steps (later: train --resume --out NEW)")
    pr.add_argument("--distill-alpha", type=float, default=None, help="healing: share of the loss that follows the "
                    "unpruned model (default 0.5)")
    pr.add_argument("--distill-temperature", type=float, default=None, help="healing: temperature (default 2)")
    pr.add_argument("--no-mlflow", action="store_true", help="do not track the healing run in MLflow")
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
    if args.teacher is not None:
        d["teacher"] = {**(d.get("teacher") or {}), "source": args.teacher}
    for flag, key in (("distill_alpha", "alpha"), ("distill_temperature", "temperature")):
        if getattr(args, flag) is not None:
            if not d.get("teacher"):
                from .training.schema import Problem

                raise JobError([Problem("teacher", f"--{flag.replace('_', '-')} needs --teacher (the model to "
                                        "distill from)")])
            d["teacher"] = {**d["teacher"], key: args.__dict__[flag]}
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
            parts = {} if event.kd_loss is None else {"kd": f"{event.kd_loss:.3f}", "ce": f"{event.ce_loss:.3f}"}
            self.bar.set_postfix(loss=f"{event.loss:.3f}", **parts, lr=f"{event.lr:.2e}",
                                 tok_s=f"{event.tokens_per_s:,.0f}")
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

    from .grow.prepare import prepare_grown_run
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
    distributed = acc.num_processes > 1
    printer = _Printer(acc.is_main_process)
    try:
        code = drive(job, out, emit=printer, resume=args.resume, extra_steps=extra or 0, train_overrides=overrides,
                     accelerator=acc, track=not args.no_mlflow, grow_prepare=prepare_grown_run)
    finally:
        printer.close()
        acc.end_training()  # DDP: destroy the process group
    if printer.error:
        print(f"error: {printer.error}", file=sys.stderr)
    elif acc.is_main_process and printer.done:
        print(f"done: {printer.done.message}; checkpoint {printer.done.checkpoint}")
        run_id = json.loads((out / "run.json").read_text()).get("mlflow_run_id") if not args.no_mlflow else None
        if run_id:
            from .training.tracking import tracking_uri

            print(f"MLflow run {run_id} in {tracking_uri(out.parent)}")
    if distributed:
        _exit_rank(code)
    return code


def _exit_rank(code: int) -> None:
    """End a torchrun rank at once, its work written and flushed. Two CI runs saw a rank that had finished
    cleanly (process group destroyed) abort in interpreter teardown ("terminate called without an active
    exception": a native thread still joinable when C++ static destructors ran), which torchrun reports as a
    failed run. os._exit skips that teardown; nothing of ours is left to run there."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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


def prune_command(args) -> int:
    """Prune a run into a new one, report what was removed and the loss, and with --heal train it right away."""
    from accelerate import Accelerator

    from .grow.prune import HEAL_STEPS, prune_run
    from .model.estimate import human
    from .training.driver import device_of, drive

    heal_steps = args.heal_steps if args.heal_steps is not None else HEAL_STEPS
    r = prune_run(args.run_dir, args.out, target_params=args.target_params, drop_layers=args.drop_layers,
                  mlp_keep=args.mlp_keep, heads_keep=args.heads_keep, heal_steps=heal_steps,
                  alpha=0.5 if args.distill_alpha is None else args.distill_alpha,
                  temperature=2.0 if args.distill_temperature is None else args.distill_temperature,
                  status=lambda text: print(f"{text}…", file=sys.stderr))
    print(f"pruned: {r.plan}\nparameters {r.params_before:,} → {r.params_after:,} "
          f"({r.params_after / r.params_before:.0%}); held-out loss {r.val_loss_before:.4f} → {r.val_loss_after:.4f} "
          "right after pruning\nlayer importance (1 − cos(in, out)): "
          + ", ".join(f"{i}: {x:.3f}" for i, x in enumerate(r.layer_importance)))
    for c in sorted(r.candidates, key=lambda c: c["loss"]):
        print(f"  tried: calibration loss {c['loss']:.4f}, {human(c['params'])} parameters, {c['shape']}")
    if not args.heal:
        print(f"new run {args.out}: heal it ({heal_steps} steps distilling from {Path(args.run_dir).name}) with "
              f"`python -m slm_blocks train --resume --out {args.out}`")
        return 0
    out = Path(args.out)
    acc = Accelerator(cpu=device_of(None, out, None) == "cpu")
    printer = _Printer(acc.is_main_process)
    try:
        code = drive(None, out, emit=printer, resume=True, accelerator=acc, track=not args.no_mlflow)
    finally:
        printer.close()
    if printer.error:
        print(f"error: {printer.error}", file=sys.stderr)
        return code
    if acc.is_main_process:
        from .grow.compare import grow_table

        print("before / after, on the run's held-out text:")
        for row in grow_table(out):
            print(f"  {row['model']:<36} {row['parameters']:>10,} parameters · held-out loss "
                  f"{row['held-out loss']:.4f} · {row['tokens/s']:>9,} tokens/s ({row['speed vs first']:.2f}×)")
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"train": train_command, "generate": generate_command, "export": export_command,
                "push": push_command, "prune": prune_command}
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
