"""Run in a fresh process by export.py: load an exported folder through the Auto classes only, and write
its logits on a fixed batch and a greedy continuation, so nothing in memory from the export is reused.

    python -m slm_blocks.sharing.verify EXPORT_DIR INPUTS.safetensors OUTPUTS.safetensors N_NEW [--remote-code]
"""

import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(argv: list[str]) -> None:
    folder, inputs, outputs, n_new = argv[:4]
    remote_code = "--remote-code" in argv  # our own export's modeling files, never a user-given repo
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote_code, dtype=torch.float32).eval()
    AutoTokenizer.from_pretrained(folder)  # the tokenizer must load too
    x = load_file(inputs)
    n = int(n_new)
    with torch.no_grad():
        logits = model(x["ids"], use_cache=False).logits.float()
        prompt = x["prompt"]
        greedy = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, pad_token_id=0)
    save_file({"logits": logits.contiguous(), "greedy": greedy.contiguous()}, outputs)


if __name__ == "__main__":
    main(sys.argv[1:])
