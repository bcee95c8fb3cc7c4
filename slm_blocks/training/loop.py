"""The training loop: a generator of typed events that the app, the CLI and the tests all consume.

    for event in train(run):          # run = prepare_run(...) or open_run(...)
        print(event)                  # StepEvent, EvalEvent, SampleEvent, CheckpointEvent, WarningEvent, DoneEvent

Muon + AdamW (optim.py) with warmup + linear or cosine decay (schedule.py: over the steps, or over the time
budget when there is one), gradient clipping and accumulation, mixed precision where it pays, periodic eval
(loss, perplexity, bits per character, exact-match accuracy on algorithmic data), a sample at each eval, a guard against
non-finite losses, early stopping, max steps and max time. Stopping is cooperative (`stop` event) and
always leaves a resumable checkpoint; resume is exact step for step (elapsed time is checkpointed too).
Runs unchanged under `accelerate launch` / `torchrun` (DDP): rank 0 evaluates, samples and saves.
"""

from __future__ import annotations

import json
import math
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict

import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint, save_checkpoint
from ..model.blocks.moe import balance
from .distill import Teacher
from .events import CheckpointEvent, DoneEvent, EvalEvent, Event, SampleEvent, StepEvent, WarningEvent, wire_name
from .optim import make_optimizer
from .run import Run, record_end
from .schedule import Segment, lr_at

MAX_BAD_STEPS = 5  # consecutive non-finite losses before a run gives up (the last good checkpoint stays)


# the events live in events.py (the app and the worker read them without importing the loop)
__all__ = ["CheckpointEvent", "DoneEvent", "EvalEvent", "Event", "SampleEvent", "StepEvent", "WarningEvent",
           "evaluate", "get_batch", "lm_loss", "lr_at", "train"]


def get_batch(data: torch.Tensor, batch_size: int, seq_len: int, gen: torch.Generator):
    """Random windows of seq_len tokens (x) and the same shifted by one (y), nanoGPT style."""
    ix = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=gen)
    offsets = torch.arange(seq_len + 1)
    chunk = data[ix[:, None] + offsets]  # (B, T+1)
    return chunk[:, :-1], chunk[:, 1:]


def lm_loss(model, x: torch.Tensor, y: torch.Tensor, parts: dict | None = None) -> torch.Tensor:
    """Cross-entropy of the next tokens; in training, plus the routers' weighted load-balancing loss of a model with
    mixture-of-experts layers (model/blocks/moe.py), whose unweighted value goes to `parts["aux"]` for the logs."""
    out = model(input_ids=x, use_cache=False)
    loss = F.cross_entropy(out.logits.flatten(0, 1).float(), y.flatten())  # logits (B, T, V)
    if getattr(out, "router_logits", None):
        weighted, aux = balance(out.router_logits)
        loss = loss + weighted
        if parts is not None:
            parts["aux"] = float(aux.detach())
    return loss


def _autocast(device: torch.device, precision: str):
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return nullcontext()


# ----------------------------------------------------------------------------- the loop


def train(run: Run, stop: threading.Event | None = None, accelerator=None):
    """Train `run` from its latest checkpoint (or from scratch), yielding events. See the module docstring.

    Rank 0 also appends step and eval metrics to `<run>/metrics.jsonl`, the run's own loss history (for
    the model card and the app) that needs no MLflow."""
    if run.is_main_writer:
        record_end(run.dir, None)  # training: not ended (a crash from here on leaves it so: interrupted)
    for event in _train(run, stop, accelerator):
        if isinstance(event, (StepEvent, EvalEvent)) and run.is_main_writer:
            with open(run.dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"kind": wire_name(event), **asdict(event)}) + "\n")
        if isinstance(event, DoneEvent) and run.is_main_writer:
            record_end(run.dir, {"error": "error", "stopped": "stopped"}.get(event.reason, "done"), event.message)
        yield event


def _train(run: Run, stop: threading.Event | None, accelerator):
    from accelerate import Accelerator

    cfg, stop = run.train_config, stop or threading.Event()
    every = cfg.derived(run.spec.max_seq_len)  # the intervals left empty, resolved once
    segment = Segment.from_dict(run.meta.get("schedule"))
    acc = accelerator or Accelerator(cpu=cfg.device == "cpu")
    device, main = acc.device, acc.is_main_process
    run.is_main_writer = main
    precision = cfg.resolved_precision(device)
    teacher = Teacher.from_run(run.dir, device)  # distillation (distill.py): None for plain training
    torch.manual_seed(cfg.seed)
    model = run.new_model().to(device)
    optimizer = make_optimizer(model, cfg)
    data_gen = torch.Generator().manual_seed(cfg.seed + 1000 * acc.process_index)
    step, tokens_seen, best_val, bad_evals, trainer_state = 0, 0, None, 0, {}
    ckpt = run.latest_checkpoint()
    if ckpt is not None:  # resume exactly: weights, moments, step, RNG streams, time trained
        trainer_state, rng = load_checkpoint(ckpt, model, optimizer)
        step, tokens_seen = trainer_state["step"], trainer_state["tokens_seen"]
        best_val, bad_evals = trainer_state.get("best_val_loss"), trainer_state.get("bad_evals", 0)
        data_gen.set_state(rng[f"data_rng_{acc.process_index}"] if f"data_rng_{acc.process_index}" in rng
                           else rng["data_rng_0"])
        torch.set_rng_state(rng["torch_rng"])
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    model, optimizer = acc.prepare(model, optimizer)
    raw = acc.unwrap_model(model)
    if cfg.compile:
        model = torch.compile(model)
    train_data, seq_len = run.train_tokens, run.seq_len
    tokens_per_step = cfg.batch_size * seq_len * cfg.grad_accum * acc.num_processes
    elapsed0 = float(trainer_state.get("elapsed_s", 0.0))  # training time before this session
    start, start_step, last_loss, bad_steps = time.perf_counter(), step, float("nan"), 0
    window_t, window_tokens = time.perf_counter(), 0
    elapsed, last_eval, eval_cost = elapsed0, step, 0.0  # eval_cost: seconds the last eval took (single process)
    next_eval_s = _next_multiple(elapsed0, every.eval_every_s)
    if every.first_eval_s is not None and elapsed0 < every.first_eval_s:
        next_eval_s = every.first_eval_s  # a first sample within seconds, whatever the step time
    next_ckpt_s = _next_multiple(elapsed0, every.checkpoint_every_s)

    def checkpoint(reason_step: int) -> str | None:
        """Called on every rank (it gathers each rank's data stream); rank 0 writes."""
        states = data_gen.get_state()[None].long()
        if acc.num_processes > 1:
            states = acc.gather(states.to(device)).cpu()
        if not main:
            return None
        rng = {"torch_rng": torch.get_rng_state(),
               **{f"data_rng_{i}": states[i].to(torch.uint8) for i in range(states.shape[0])}}
        state = {"tokens_seen": tokens_seen, "best_val_loss": best_val, "bad_evals": bad_evals,
                 "last_train_loss": last_loss, "elapsed_s": elapsed0 + time.perf_counter() - start,
                 "max_steps": cfg.max_steps, "max_time": cfg.max_time, "schedule": segment.to_dict(),
                 "lr": lr_at(reason_step, cfg, elapsed, segment)}
        return str(save_checkpoint(run.dir, reason_step, raw, optimizer.optimizer if hasattr(optimizer, "optimizer")
                                   else optimizer, rng, state, keep_last=cfg.keep_checkpoints))

    def finish(reason: str, message: str):
        path = checkpoint(step)
        acc.wait_for_everyone()
        return DoneEvent(step, reason, message, path, best_val)

    def eval_events():
        """Rank 0: validation metrics and a sample; updates the early-stopping state."""
        nonlocal best_val, bad_evals
        ev = evaluate(raw, run, device, precision)
        ev.step, ev.train_loss = step, last_loss
        yield ev
        if every.sample_tokens:
            yield SampleEvent(step, run.sample(raw, every.sample_tokens, seed=cfg.seed + step))
        if best_val is None or ev.val_loss < best_val - cfg.early_stop_min_delta:
            best_val, bad_evals = ev.val_loss, 0
        else:
            bad_evals += 1

    while True:
        if step >= cfg.max_steps:
            yield finish("max_steps", f"reached max_steps {cfg.max_steps}")
            return
        elapsed = elapsed0 + time.perf_counter() - start
        stopped = stop.is_set()
        if acc.num_processes > 1:  # one decision and one clock for every rank, or DDP deadlocks / lrs differ
            flags = acc.reduce(torch.tensor([float(stopped), elapsed], device=device, dtype=torch.float64), "sum")
            stopped, elapsed = bool(flags[0] > 0), float(flags[1]) / acc.num_processes
        timed_out = bool(cfg.max_time) and elapsed + eval_cost >= cfg.max_time  # the final eval fits the budget
        if timed_out:
            if main and step > last_eval and (every.eval_every or every.eval_every_s):
                yield from eval_events()  # a time-budgeted run ends with its final validation loss
            yield finish("max_time", f"reached max_time {cfg.max_time:g} s")
            return
        if stopped:
            yield finish("stopped", "stopped by the user; resume continues from here")
            return

        lr = lr_at(step, cfg, elapsed, segment)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        total, parts, aux = 0.0, None, None
        for _ in range(cfg.grad_accum):
            x, y = get_batch(train_data, cfg.batch_size, seq_len, data_gen)
            balance_part: dict = {}
            with _autocast(device, precision):
                if teacher is None:
                    loss = lm_loss(model, x.to(device), y.to(device), balance_part) / cfg.grad_accum
                else:  # α·kd + (1−α)·ce; kd and ce are logged apart
                    loss, kd, ce = teacher.loss(model, x.to(device), y.to(device), balance_part)
                    loss = loss / cfg.grad_accum
                    parts = (0.0, 0.0) if parts is None else parts
                    parts = (parts[0] + float(kd) / cfg.grad_accum, parts[1] + float(ce) / cfg.grad_accum)
            if "aux" in balance_part:  # the routers' load balance, logged as its own metric
                aux = (aux or 0.0) + balance_part["aux"] / cfg.grad_accum
            scaler.scale(loss).backward() if precision == "fp16" else acc.backward(loss)
            total += loss.detach().float()
        if precision == "fp16":
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        step_loss = float(acc.reduce(total, "mean")) if acc.num_processes > 1 else float(total)
        if not (math.isfinite(step_loss) and math.isfinite(float(grad_norm))):
            optimizer.zero_grad(set_to_none=True)
            if precision == "fp16":
                scaler.update()  # lowers the loss scale, and resets unscale_ for the next step
            bad_steps += 1
            yield WarningEvent(step, f"non-finite loss or gradient at step {step} (loss {step_loss}); update "
                               f"skipped ({bad_steps}/{MAX_BAD_STEPS}). Lower the learning rate if this repeats.")
            if bad_steps >= MAX_BAD_STEPS:
                acc.wait_for_everyone()
                yield DoneEvent(step, "error", f"{MAX_BAD_STEPS} non-finite steps in a row; training stopped. The "
                                "last good checkpoint is kept: lower the learning rate and resume.",
                                None, best_val)
                return
            continue
        bad_steps = 0
        if precision == "fp16":
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        window_tokens += tokens_per_step
        last_loss = step_loss

        if step % every.log_every == 0 or step == cfg.max_steps:
            now = time.perf_counter()
            tps = window_tokens / max(now - window_t, 1e-9)
            window_t, window_tokens = now, 0
            run_elapsed = elapsed0 + now - start
            per_step = (now - start) / max(step - start_step, 1)
            eta = per_step * (cfg.max_steps - step)
            if cfg.max_time:
                eta = min(eta, max(0.0, cfg.max_time - run_elapsed))
            yield StepEvent(step, step_loss, lr, float(grad_norm), tps, tokens_seen, run_elapsed, eta,
                            *(parts or (None, None)), aux)

        eval_now = bool(every.eval_every) and (step % every.eval_every == 0 or step == cfg.max_steps
                                               or step == every.first_eval)
        if next_eval_s is not None and elapsed >= next_eval_s:  # `elapsed` is the same on every rank
            eval_now, next_eval_s = True, _next_multiple(elapsed, every.eval_every_s)
        if eval_now:
            t_eval = time.perf_counter()
            if main:
                yield from eval_events()
            last_eval = step
            if acc.num_processes == 1:  # ranks never see rank 0's eval cost, so this stays single-process
                eval_cost = time.perf_counter() - t_eval
                if next_eval_s is not None:  # time-based evals (and samples) keep to ~5% of the wall time
                    next_eval_s = max(next_eval_s, elapsed0 + time.perf_counter() - start + 19 * eval_cost)
            stop_early = bool(cfg.early_stop_patience) and bad_evals >= cfg.early_stop_patience
            if acc.num_processes > 1:
                flag = acc.reduce(torch.tensor(float(stop_early), device=device), "sum")
                stop_early = bool(flag > 0)
            if stop_early:
                yield finish("early_stop", f"validation loss did not improve for {cfg.early_stop_patience} evals")
                return
        ckpt_now = bool(every.checkpoint_every) and step % every.checkpoint_every == 0
        if next_ckpt_s is not None and elapsed >= next_ckpt_s:
            ckpt_now, next_ckpt_s = True, _next_multiple(elapsed, every.checkpoint_every_s)
        if ckpt_now and step < cfg.max_steps:
            path = checkpoint(step)
            if path:
                yield CheckpointEvent(step, path)


def _next_multiple(t: float, every: float | None) -> float | None:
    """The first multiple of `every` seconds after `t` (None when there is no time-based interval)."""
    return None if not every else (math.floor(t / every) + 1) * every


@torch.no_grad()
def evaluate(model, run: Run, device, precision: str = "fp32") -> EvalEvent:
    """Mean validation loss over fixed windows (the same ones every eval, so curves are smooth)."""
    cfg = run.train_config
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = get_batch(run.val_tokens, cfg.batch_size, run.seq_len, gen)
        with _autocast(device, precision):
            losses.append(float(lm_loss(model, x.to(device), y.to(device))))
    val = sum(losses) / len(losses)
    accuracy = run.accuracy(model) if run.corpus.eval_examples else None
    model.train(was_training)
    bpc = val / math.log(2) * run.tokens_per_char
    return EvalEvent(0, float("nan"), val, math.exp(min(val, 50)), bpc, accuracy)
