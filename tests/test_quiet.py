"""slm_blocks/quiet.py: torchao is imported only when something is quantized, and quantized exports still save and
load (transformers' torchao support completed on first use)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import sys, tempfile
from slm_blocks import build_model, load_preset
from slm_blocks.training.tokenization import build_tokenizer

tok = build_tokenizer("char", "ROMEO: what say you, sir?\n" * 4)
model = build_model(load_preset("tiny-char").copy(vocab_size=len(tok), d_model=32)).eval()
print("torchao before quantizing:", "torchao" in sys.modules)
from slm_blocks.compress.quant_export import export_quantized
from transformers import AutoModelForCausalLM

with tempfile.TemporaryDirectory() as d:
    export_quantized(model, tok, d + "/int8", "int8", None, verify=False)  # save_pretrained of torchao tensors
    back = AutoModelForCausalLM.from_pretrained(d + "/int8")
    import torch
    print("reloaded:", sorted({type(m.weight).__name__ for m in back.modules() if isinstance(m, torch.nn.Linear)}))
print("torchao after quantizing:", "torchao" in sys.modules)
"""


def test_torchao_loads_only_for_quantization_and_quietly():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "", "HOME": str(Path.home()), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torchao before quantizing: False" in proc.stdout and "torchao after quantizing: True" in proc.stdout
    assert "Int8Tensor" in proc.stdout, proc.stdout
    for noise in ("Failed to load", "_pytree"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
