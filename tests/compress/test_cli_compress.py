"""`python -m slm_blocks generate --quant` and `export --format gguf` in subprocesses (the int8 export path
under the CLI, export_run_quantized, is tested in test_quant_export.py)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "slm_blocks", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_generate_with_quantized_weights(trained_tiny_char):
    run = trained_tiny_char.dir
    for quant in ("int8",):  # int4 / bf16 generation: test_quantize.py, in-process
        r = cli("generate", run, "--quant", quant, "--prompt", "ROMEO:", "--max-new-tokens", "20", "--temperature", "0")
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.startswith("ROMEO:") and len(r.stdout.strip()) > 10, r.stdout
    r = cli("generate", run, "--quant", "int4", "--group-size", "48", "--max-new-tokens", "5")
    assert r.returncode == 2 and "error: group size 48 is not supported" in r.stderr and "Traceback" not in r.stderr


def test_export_gguf_and_bad_quant(trained_tiny_char, tmp_path):
    run = trained_tiny_char.dir
    r = cli("export", run, "--format", "gguf", "--out", tmp_path / "gguf")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "greedy continuation identical, tokenizer identical" in r.stdout and "ollama create" in r.stdout, r.stdout
    assert (tmp_path / "gguf" / f"{Path(run).name}-q8_0.gguf").is_file()
    for bad, words in [(["--format", "gguf", "--quant", "int8"], "not a GGUF quantization"),
                       (["--quant", "q8_0"], "q8_0 / f16 go with --format gguf")]:
        r = cli("export", run, *bad, "--out", tmp_path / "bad")
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "bad").exists()
