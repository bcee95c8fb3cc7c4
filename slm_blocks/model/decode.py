"""One new token through the model at batch 1: the decode step of `stream_tokens`.

At the sizes this app trains (tiny-char: 4 layers, d_model 128) a decode step is ~100 tiny ops, and the time
goes to dispatching them, not to arithmetic: the module forward spends most of a token on work one token does not
need (module calls, a q/k/v weight concatenation per layer, (1, 1, C) matrix products, RoPE tables and masks
rebuilt per call, an attention kernel that starts the thread pool for 1 query). So every block module defines,
next to its forward, a `step` computing the same function on one token's vector with cheaper ops, from the same
weights and helpers (blocks/attention.py says how attention does it). `Decoder` is the model body's step
(SLMModel.step) followed by the head's; it reads the parameters when it is built and is dropped with its
generation, so no copy outlives a training step (nothing is stored on the model).

`tests/model/test_decode.py` checks that its logits equal the module forward's after the same prefix, for every
preset and every positional / attention / norm-placement variant; `Decoder.unsupported` names what it does not
cover (dropout in training mode, quantized or wrapped projections), and `stream_tokens` then uses the forward.
"""

from __future__ import annotations

import torch
from torch import nn

from .assembly import Decoding
from .blocks import lm_head


class Decoder:
    """`decoder(token, pos)` -> float logits (V,) of the token after `token` (a 0-d id tensor) placed at `pos`,
    its keys/values written into `cache` (a generation.StaticCache at batch 1, filled up to `pos`).

    Build it inside inference mode, once per generation: it copies the q/k/v weights as they are now."""

    def __init__(self, model, cache):
        why = self.unsupported(model)
        if why:
            raise ValueError(f"the decode step does not cover this model: {why}")
        p = model.model.embed_tokens.weight
        decoding = Decoding(cache, p.dtype, p.device)
        self.body = model.model.step(decoding)
        self.head = lm_head.step(model.lm_head, decoding)
        self.to_float = p.dtype != torch.float32
        self.cache, self.n_attn = cache, len(cache.lengths)

    @staticmethod
    def unsupported(model) -> str | None:
        """Why this model needs the module forward (None: the decode step computes it)."""
        for name, mod in model.named_modules():
            live_dropout = isinstance(mod, nn.Dropout) and mod.p > 0 or \
                isinstance(getattr(mod, "dropout", None), float) and mod.dropout > 0  # attention probabilities
            if mod.training and live_dropout:
                return f"{name} has dropout and the model is in training mode"
            for pname, child in mod.named_children():
                if pname.endswith("_proj") and not (type(child) is nn.Linear and type(child.weight) is nn.Parameter):
                    return f"{name}.{pname} is not a plain nn.Linear"
            if isinstance(mod, (nn.Linear, nn.Embedding)) and type(mod.weight) is not nn.Parameter:
                return f"{name}.weight is not a plain parameter (quantized?)"
            if mod._forward_hooks or mod._forward_pre_hooks:
                return f"{name or 'the model'} has forward hooks"
        if not all(callable(getattr(layer, "step", None)) for layer in model.model.layers):
            return "a layer without a one-token step"
        return None

    def __call__(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        logits = self.head(self.body(token, pos))  # (V,)
        self.cache.lengths = [pos + 1] * self.n_attn
        return logits.float() if self.to_float else logits
