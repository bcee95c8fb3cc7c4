"""Run in a fresh process by gguf_export.py: load a GGUF file with transformers' own GGUF reader (see
gguf_read.py) and write its logits on a fixed batch, a greedy continuation, and how its tokenizer encodes
and decodes a text, so nothing of the writer's memory is reused.

    python -m slm_blocks.compress.gguf_verify FILE.gguf INPUTS.safetensors OUTPUTS.safetensors N_NEW
"""

import sys

import torch
from safetensors.torch import load_file, save_file

from .gguf_read import CHECKED_ONLY, SUPPORTED, load_gguf


def main(argv: list[str]) -> None:
    path, inputs, outputs, n_new = argv[:4]
    model, tokenizer, _ = load_gguf(path, archs=SUPPORTED + CHECKED_ONLY)  # our own file, written just now
    x = load_file(inputs)
    n = int(n_new)
    text = bytes(x["text"].tolist()).decode("utf-8")
    with torch.no_grad():
        logits = model(x["ids"], use_cache=False).logits.float()
        prompt = x["prompt"]
        greedy = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False, pad_token_id=0)
    ids = tokenizer(text or " ", add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True).encode("utf-8")
    save_file({"logits": logits.contiguous(), "greedy": greedy.contiguous(), "text_ids": torch.tensor(ids),
               "decoded": torch.tensor(list(decoded) or [0], dtype=torch.uint8)}, outputs)


if __name__ == "__main__":
    main(sys.argv[1:])
