"""The price of a smaller model, measured: for fp32, bf16, int8, int4 and GGUF q8_0 of the same weights, the
file size, generation speed on this machine, held-out loss / bits per character and the greedy text.

Every number is measured in the same call, so the ratios against fp32 are fair even on a busy machine
(absolute tokens/s are not comparable across machines). Speed is measured on the Generate tab's path: greedy
`stream_tokens` (its decode step where it covers the weights, the module forward for torchao's int8 / int4) on
one thread, as the tab decodes, prefill included; variants take turns in rotated rounds and the median counts.
The GGUF row's quality is computed from the file's weights (rounded to q8_0 and back, exactly what a correct
reader loads); its speed is llama.cpp's at the same thread count when llama-cpp-python is installed, else left
empty: PyTorch running dequantized weights says nothing about llama.cpp's speed.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .quantize import QuantizeError, quantize_model

VARIANTS = ("fp32", "bf16", "int8", "int4", "gguf-q8_0")


@dataclass
class Row:
    variant: str
    size_bytes: int | None = None
    tokens_per_s: float | None = None
    loss: float | None = None  # held-out loss, nats per token
    bits_per_char: float | None = None
    greedy: str = ""
    note: str = ""  # why a number is missing, or what it means

    def to_dict(self) -> dict:
        return asdict(self)


def heldout_loss(model, val_tokens: torch.Tensor, seq_len: int, windows: int = 8) -> float:
    """Mean next-token loss over `windows` evenly spaced windows of the validation tokens (deterministic)."""
    n = len(val_tokens) - seq_len
    if n < 0:
        raise ValueError(f"the validation split has {len(val_tokens)} tokens, fewer than one window of {seq_len}")
    starts = torch.linspace(0, n, min(windows, n + 1)).long()
    x = torch.stack([val_tokens[s: s + seq_len] for s in starts.tolist()])  # (W, T): labels are x shifted inside
    with torch.inference_mode():
        out = model(x, labels=x, use_cache=False)
    return float(out.loss)


GENERATE_THREADS = 1  # the Generate tab decodes on one thread (ui/streaming.one_thread): the table measures the same


def _on_threads(threads: int, fn):
    """fn() with torch on `threads` threads (this thread's setting, restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _greedy_cfg(n_tokens: int):
    from ..model.generation import SamplingConfig

    return SamplingConfig(max_new_tokens=n_tokens, temperature=0.0)


def _timed_tokens(model, ids: torch.Tensor, n_tokens: int, threads: int) -> tuple[float, list[int]]:
    """(seconds, tokens) of one greedy run of n_tokens through `stream_tokens`, the Generate tab's loop (EOS
    ignored, so a fast EOS does not flatter a variant)."""
    from ..model.generation import stream_tokens

    def go():
        t = time.perf_counter()
        out = list(stream_tokens(model, ids, _greedy_cfg(n_tokens)))
        return time.perf_counter() - t, out

    return _on_threads(threads, go)


def _text(tokenizer, out: list[int]) -> str:
    eos = tokenizer.eos_token_id
    return tokenizer.decode(out[: out.index(eos)] if eos in out else out, skip_special_tokens=True)


def generation_speed(model, tokenizer, prompt: str, n_tokens: int, repeats: int = 3,
                     threads: int = GENERATE_THREADS) -> tuple[float, str]:
    """(tokens per second, greedy text) of `model` on the Generate tab's path (stream_tokens, one thread):
    the median of `repeats` greedy runs of n_tokens, prefill included."""
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    runs = [_timed_tokens(model, ids, n_tokens, threads) for _ in range(repeats)]
    out = runs[-1][1]
    return len(out) / statistics.median(t for t, _ in runs), _text(tokenizer, out)


def llama_cpp_runner(gguf_path: str | Path, threads: int = GENERATE_THREADS):
    """A function (prompt ids, n) -> n greedy token ids computed by llama.cpp (llama-cpp-python) on the file, its
    cache emptied first so every call prefills the prompt; None without llama-cpp-python. n_ctx 0: the file's
    own context."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(gguf_path), n_ctx=0, n_threads=threads, n_threads_batch=threads, verbose=False,
                seed=0)

    def run(prompt: list[int], n: int) -> list[int]:
        llm.reset()
        out = []
        for t in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(t))
            if len(out) >= n:
                break
        return out

    return run


def llama_cpp_speed(gguf_path: Path, prompt: str, n_tokens: int, repeats: int = 3, *, tokenizer,
                    threads: int = GENERATE_THREADS) -> float | None:
    """llama.cpp's greedy tokens/s on the file (median of `repeats`, prefill included), or None without it."""
    run = llama_cpp_runner(gguf_path, threads)
    if run is None:
        return None
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = len(run(ids, n_tokens))
        times.append((time.perf_counter() - t) / max(n, 1))
    return 1.0 / statistics.median(times)


def _file_size(model, variant: str, tokenizer, tmp: Path, group_size) -> int:
    """Bytes of the file a user would download for this variant (safetensors weights, or the .gguf)."""
    spec = model.config.model_spec()
    if variant in ("fp32", "bf16"):
        state = {k: v.contiguous() for k, v in model.state_dict().items()
                 if not (spec.tie_embeddings and k == "lm_head.weight")}
        if variant == "bf16":
            state = {k: v.to(torch.bfloat16) for k, v in state.items()}
        save_file(state, tmp / f"{variant}.safetensors")
        return (tmp / f"{variant}.safetensors").stat().st_size
    if variant in ("int8", "int4"):
        from .quant_export import export_quantized

        r = export_quantized(model, tokenizer, tmp / variant, variant, group_size, verify=False)
        return r.size_bytes
    raise ValueError(variant)


def compare_variants(model, tokenizer, val_tokens: torch.Tensor, tokens_per_char: float, *, prompt: str,
                     seq_len: int | None = None, n_tokens: int = 64, windows: int = 8, repeats: int = 3,
                     group_size: int | None = None, variants=VARIANTS, threads: int = GENERATE_THREADS) -> list[Row]:
    """One Row per variant (see module doc). A variant that cannot be made (say int4 with a group size the
    widths do not divide, or GGUF for a free layer order) gets a row with the reason instead of numbers.

    Speed: `repeats` rounds, each running every variant once in a rotated order, on `threads` threads (the
    Generate tab's one), the median per variant; so a busy moment slows every variant alike instead of
    the one that happened to be measured then."""
    from .gguf_export import GGUFError, gguf_support, rounded_model, write_gguf

    model = model.float().eval()
    spec = model.config.model_spec()
    seq_len = seq_len or spec.max_seq_len
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    rows, timers = [], {}  # timers: variant -> () -> seconds per token
    with tempfile.TemporaryDirectory(prefix="slm-table-") as d:
        tmp = Path(d)
        for variant in variants:
            row = Row(variant)
            try:
                if variant.startswith("gguf-"):
                    quant = variant.split("-", 1)[1]
                    if gguf_support(spec)[0] is None:
                        raise GGUFError(gguf_support(spec)[1])
                    r = write_gguf(model, tokenizer, tmp / f"model-{quant}.gguf", quant)
                    row.size_bytes = r.size_bytes
                    variant_model = rounded_model(model, quant)
                    runner = llama_cpp_runner(tmp / r.file, threads)
                    if runner is not None:
                        timers[variant] = lambda run=runner: _per_token(lambda: run(ids, n_tokens))
                    row.greedy = _text(tokenizer, _timed_tokens(variant_model, torch.tensor([ids]), n_tokens,
                                                                threads)[1])
                    row.note = ("speed: llama.cpp (llama-cpp-python), same threads" if runner else
                                "speed needs llama.cpp (pip install llama-cpp-python)") + \
                        f"; loss and text from the file's {quant} weights"
                else:
                    variant_model = quantize_model(model, variant, group_size)
                    row.size_bytes = _file_size(model, variant, tokenizer, tmp, group_size)
                    seconds, out = _timed_tokens(variant_model, torch.tensor([ids]), n_tokens, threads)  # warm-up
                    row.greedy = _text(tokenizer, out)
                    timers[variant] = lambda m=variant_model: _per_token(
                        lambda: _timed_tokens(m, torch.tensor([ids]), n_tokens, threads)[1])
                row.loss = heldout_loss(variant_model, val_tokens, seq_len, windows)
                row.bits_per_char = row.loss / math.log(2) * tokens_per_char
            except (QuantizeError, GGUFError, ValueError) as e:
                row.note = f"not available: {e}"
            rows.append(row)
        names = list(timers)
        per_token: dict[str, list[float]] = {v: [] for v in names}
        for r in range(max(1, repeats) if names else 0):
            for v in names[r % len(names):] + names[: r % len(names)]:
                per_token[v].append(timers[v]())
    for row in rows:
        if per_token.get(row.variant):
            row.tokens_per_s = 1.0 / statistics.median(per_token[row.variant])
    return rows


def _per_token(run) -> float:
    """Seconds per token of one call of `run` (which returns the tokens it made)."""
    t = time.perf_counter()
    n = len(run())
    return (time.perf_counter() - t) / max(n, 1)


def table_rows(rows: list[Row]) -> list[dict]:
    """Display rows: numbers with ratios against the fp32 row of the same call."""
    base = next((r for r in rows if r.variant == "fp32" and r.loss is not None), None)
    out = []
    for r in rows:
        def ratio(v, b):
            return f" ({v / b:.2f}×)" if v is not None and b else ""

        out.append({
            "weights": r.variant,
            "file": (f"{r.size_bytes / 2**20:.2f} MiB" + ratio(r.size_bytes, base and base.size_bytes))
            if r.size_bytes else "—",
            "tokens/s": (f"{r.tokens_per_s:,.0f}" + ratio(r.tokens_per_s, base and base.tokens_per_s))
            if r.tokens_per_s else "—",
            "held-out loss": (f"{r.loss:.4f}" + (f" ({(r.loss / base.loss - 1) * 100:+.2f}%)" if base else ""))
            if r.loss is not None else "—",
            "bits/char": f"{r.bits_per_char:.3f}" if r.bits_per_char is not None else "—",
            "greedy text": r.greedy,
            "note": r.note,
        })
    return out


def table_markdown(rows: list[Row], text_chars: int = 60) -> str:
    """A Markdown table (greedy text shortened, newlines shown as ⏎)."""
    shown = table_rows(rows)
    head = ["weights", "file", "tokens/s", "held-out loss", "bits/char", "greedy text"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in shown:
        text = r["greedy text"].replace("\n", "⏎").replace("|", "\\|")[:text_chars]
        lines.append("| " + " | ".join([r["weights"], r["file"], r["tokens/s"], r["held-out loss"], r["bits/char"],
                                         f"`{text}`" if text else "—"]) + " |")
    notes = [f"- {r['weights']}: {r['note']}" for r in shown if r["note"]]
    return "\n".join(lines + ([""] + notes if notes else []))


def run_table(run_dir: str | Path, *, prompt: str | None = None, **kw) -> list[Row]:
    """compare_variants for a run folder's latest checkpoint on its own validation split."""
    from ..training.run import open_run

    run = open_run(run_dir)
    prompt = prompt or run.corpus.val_text[:16] or "\n"
    return compare_variants(run.load_model(), run.tokenizer, run.val_tokens, run.tokens_per_char, prompt=prompt,
                            seq_len=run.seq_len, **kw)
