"""What `python -m slm_blocks export --format gguf | --quant int8/int4` does (slm_blocks/cli.py parses)."""

from __future__ import annotations


def export_compressed(args) -> int:
    """Quantized transformers export or GGUF export of a run; prints what was verified."""
    if args.format == "gguf":
        from .gguf_export import QUANTS, GGUFError, export_run_gguf

        quant = args.quant or "q8_0"
        if quant not in QUANTS:
            raise GGUFError(f"--quant {quant} is not a GGUF quantization; use {' or '.join(QUANTS)}")
        r = export_run_gguf(args.run_dir, args.out, quant, overwrite=args.overwrite)
        print(f"exported {r.file} (llama.cpp architecture {r.arch}, {r.quant}, {r.size_bytes / 2**20:.2f} MiB) to "
              f"{r.out_dir}\nverified by transformers' GGUF reader in a fresh process: max |Δlogits| "
              f"{r.max_abs_diff:.2e}, greedy continuation {'identical' if r.greedy_match else 'different'}, "
              f"tokenizer {'identical' if r.tokenizer_match else 'different'}")
        for note in r.notes:
            print(f"note: {note}")
        print(f"run it: llama-completion -m {r.out_dir}/{r.file} -p \"...\" -no-cnv   |   ollama create NAME -f "
              f"{r.out_dir}/Modelfile")
        return 0
    from .quant_export import export_run_quantized
    from .quantize import QuantizeError

    if args.quant not in ("int8", "int4"):
        raise QuantizeError(f"--quant {args.quant} is not a transformers export; use fp32, int8 or int4 "
                            "(q8_0 / f16 go with --format gguf)")
    r = export_run_quantized(args.run_dir, args.out, args.quant, args.group_size, overwrite=args.overwrite)
    group = f"group size {r.group_size}" if r.group_size else "per row"
    print(f"exported {r.model_class} with {r.weights} weights ({group}, torchao; "
          f"{r.size_bytes / 2**20:.2f} MiB) to {r.out_dir}\nverified in a fresh process: max |Δlogits| "
          f"{r.max_abs_diff:.2e} against the in-app {r.weights} model, greedy continuation "
          f"{'identical' if r.greedy_match else 'different'}")
    return 0
