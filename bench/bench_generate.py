"""Tokens/s of our generation loop against transformers' generate() and llama.cpp, on a preset with random weights.

    python bench/bench_generate.py [--preset tiny-char|llama] [--rounds 9] [--new 56] [--threads N]

Every method generates the same number of new tokens greedily from the same 8-token prompt (8 + 56 fits
the 64-token context, so nothing is cropped). Each round runs every method once, in a rotated order so
no method always runs first or last; the table shows the median. Prefill is included in every method's
time. "forward floor" is a bare loop of module forwards + argmax over the same static cache: what any loop
around the model's forward can reach. `stream_tokens` decodes with the lean one-token step of
slm_blocks/model/decode.py instead (same logits, tests/model/test_decode.py); "decode-step floor" is a bare
loop of that step + argmax, so ours minus it is the sampling loop's own cost (q/k/v stacking included: it
happens once per generation). A last row times ours over 500 tokens, past the context, which exercises
cropping + re-prefill. --profile adds a torch.profiler op table of ours.

llama.cpp columns (when llama-cpp-python is installed: `python bench/bench_llama_cpp.py --build-only`): the
same weights written as GGUF f16 and q8_0 (compress/gguf_export.py), run by llama-cpp-python at the same thread
count, batch 1, prefill included (its KV cache is emptied before each run), greedy from the same prompt ids;
they take part in the same rotated rounds. Their greedy tokens are compared with ours too. The tokenizer only
fills the GGUF's vocabulary: char on tinyshakespeare for tiny-char (65 tokens, its vocabulary), BPE trained on
it at the preset's vocabulary size otherwise.
Results also go to bench/results/generate-PRESET.json.
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
import transformers  # noqa: E402

from slm_blocks import build_model, load_preset  # noqa: E402
from slm_blocks.model.decode import Decoder  # noqa: E402
from slm_blocks.model.generation import SamplingConfig, StaticCache, _logits, stream_tokens  # noqa: E402
from slm_blocks.sharing.native import to_native  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def preset_model(name: str):
    """(model with random weights, its tokenizer): the preset at the vocabulary of a tokenizer built on
    tinyshakespeare (char for a 65-token preset, BPE at the preset's vocabulary size otherwise)."""
    from slm_blocks.training.tokenization import build_tokenizer

    spec = load_preset(name)
    text = DATA.read_text(encoding="utf-8")
    tok = build_tokenizer("char", text) if spec.vocab_size <= 256 else \
        build_tokenizer("bpe", text, vocab_size=spec.vocab_size)
    torch.manual_seed(0)
    return build_model(spec.copy(vocab_size=len(tok))).eval(), tok


def llama_cpp_methods(model, tok, prompt: list[int], n: int, threads: int, tmp: Path) -> dict:
    """{name: () -> the n greedy token ids}, one per GGUF quantization, run by llama-cpp-python."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return {}
    from slm_blocks.compress.gguf_export import write_gguf

    methods = {}
    for quant in ("f16", "q8_0"):
        path = tmp / f"model-{quant}.gguf"
        write_gguf(model, tok, path, quant)
        llm = Llama(model_path=str(path), n_ctx=0, n_threads=threads, n_threads_batch=threads, n_batch=512,
                    verbose=False, seed=0)

        def run(llm=llm):
            llm.reset()  # forget the cache: the prompt is prefilled in every run
            out = []
            for t in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
                out.append(int(t))
                if len(out) == n:
                    return out
            return out

        methods[f"llama.cpp {quant} (GGUF, llama-cpp-python)"] = run
    return methods


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny-char")
    ap.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads (default: torch's)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--prompt", type=int, default=8)
    ap.add_argument("--new", type=int, default=56)
    ap.add_argument("--long", type=int, default=500)
    ap.add_argument("--profile", action="store_true", help="print where our loop spends its time")
    ap.add_argument("--out", default=None, help="default bench/results/generate-PRESET.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    import tempfile

    model, tok = preset_model(args.preset)
    native = to_native(model).eval()
    prompt = torch.randint(1, model.config.vocab_size, (1, args.prompt))
    n = args.new
    # attention_mask: without it generate() guesses padding from pad_token_id occurrences in the prompt
    hf = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n, do_sample=False,
              pad_token_id=0)
    greedy = SamplingConfig(max_new_tokens=n, temperature=0)

    @torch.inference_mode()
    def floor():
        cache, out = StaticCache(model), []
        tok = _logits(model, prompt, 0, cache).argmax().view(1, 1)
        for i in range(n):
            out.append(int(tok))
            if i < n - 1:
                tok = _logits(model, tok, args.prompt + i, cache).argmax().view(1, 1)
        return out

    @torch.inference_mode()
    def decode_floor():
        cache, out = StaticCache(model), []
        tok = _logits(model, prompt, 0, cache).argmax()
        step = Decoder(model, cache)
        for i in range(n):
            out.append(int(tok))
            if i < n - 1:
                tok = step(tok, args.prompt + i).argmax()
        return out

    tmp = Path(tempfile.mkdtemp(prefix="slm-bench-generate-"))
    methods = {
        "ours: stream_tokens": lambda: list(stream_tokens(model, prompt, greedy)),
        **llama_cpp_methods(model, tok, prompt[0].tolist(), n, threads, tmp),
        "transformers generate (KV cache)": lambda: model.generate(prompt, use_cache=True, **hf)[0, -n:].tolist(),
        "transformers generate (no cache)": lambda: model.generate(prompt, use_cache=False, **hf)[0, -n:].tolist(),
        f"native {type(native).__name__} generate": lambda: native.generate(prompt, **hf)[0, -n:].tolist(),
        "forward floor: bare module forward + argmax loop": floor,
        "decode-step floor: bare decode step + argmax loop": decode_floor,
    }
    outputs = {name: f() for name, f in methods.items()}  # warm-up, and every method must agree
    same = {name: o == outputs["ours: stream_tokens"] and len(o) == n for name, o in outputs.items()}

    times = {name: [] for name in methods}
    names = list(methods)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - t0)
    tps = {name: n / statistics.median(ts) for name, ts in times.items()}

    long_cfg = SamplingConfig(max_new_tokens=args.long, temperature=0)
    long_times = []
    for _ in range(max(3, args.rounds // 3)):
        t0 = time.perf_counter()
        count = sum(1 for _ in stream_tokens(model, prompt, long_cfg))
        long_times.append(time.perf_counter() - t0)
    assert count == args.long
    long_tps = args.long / statistics.median(long_times)

    base = tps["transformers generate (KV cache)"]
    nat = next(v for k, v in tps.items() if k.startswith("native "))
    ours = tps["ours: stream_tokens"]
    print(f"{args.preset}, random init, prompt {args.prompt}, {n} new tokens, greedy, median of {args.rounds} rounds, "
          f"torch {torch.__version__}, transformers {transformers.__version__}, {threads} threads")
    print("same tokens as ours: " + ", ".join(f"{k}: {v}" for k, v in same.items() if k != "ours: stream_tokens"))
    if not any(k.startswith("llama.cpp") for k in tps):
        print("(no llama.cpp columns: llama-cpp-python is not installed; python bench/bench_llama_cpp.py --build-only)")
    print("\n| method | tokens/s | ms/token | vs generate (cache) | vs native | ours vs it |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, v in tps.items():
        print(f"| {name} | {v:,.0f} | {1000 / v:.2f} | {v / base:.2f}x | {v / nat:.2f}x | {ours / v:.2f}x |")
    ctx = model.config.max_position_embeddings
    print(f"| ours, {args.long} tokens (crops past {ctx}) | {long_tps:,.0f} | {1000 / long_tps:.2f} | "
          f"{long_tps / base:.2f}x | {long_tps / nat:.2f}x | |")

    result = {
        "preset": args.preset, "prompt_tokens": args.prompt, "new_tokens": n, "rounds": args.rounds,
        "same_tokens": same, "tokens_per_s": tps, "seconds": times,
        "long": {"new_tokens": args.long, "tokens_per_s": long_tps, "seconds": long_times},
        "ratio_vs_generate_cache": {k: v / base for k, v in tps.items()},
        "ratio_vs_native": {k: v / nat for k, v in tps.items()},
        "env": {"torch": torch.__version__, "transformers": transformers.__version__,
                "threads": threads, "python": platform.python_version(),
                "machine": platform.machine()},
    }
    out = Path(args.out or ROOT / "bench" / "results" / f"generate-{args.preset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                methods["ours: stream_tokens"]()
        print(f"\nours, 10 x {n} tokens, by op:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
