"""What the block modules share while one model is assembled from a spec (`Build`), while a generation decodes
one token at a time (`Decoding`), and while an estimate adds up costs (`Costs`).

Each object is made once per model, generation or estimate and handed to every block module's hook in turn,
so a block needs no knowledge of the others: the positional block leaves its RoPE base and ALiBi choice in
`Build` for the attention layers that come after it, an attention layer takes the next KV-cache slot, and a
one-token step finds the tables every layer shares in `Decoding`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Build:
    """The state of one model being built, block by block in spec order."""

    spec: object  # the ModelSpec
    positional: object  # the spec's positional block (kind "none" when it has none)
    attention_layers: int = 0  # KV-cache slots handed out so far
    rope_keys: set = field(default_factory=set)  # (theta, head_dim) pairs the layers rotate with
    state_layers: int = 0  # recurrent / convolution state slots handed out so far (layer_states)

    def next_cache_slot(self) -> int:
        self.attention_layers += 1
        return self.attention_layers - 1

    def next_state_slot(self) -> int:
        self.state_layers += 1
        return self.state_layers - 1


@dataclass
class Decoding:
    """One generation at batch 1: its KV cache (generation.StaticCache), the positions it holds, and the
    position tables built once for every layer (a memo keyed by what the table depends on)."""

    cache: object
    dtype: torch.dtype
    device: torch.device
    tables: dict = field(default_factory=dict)

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    def table(self, key, make):
        """The table `key`, made by `make()` the first time a layer asks for it."""
        if key not in self.tables:
            self.tables[key] = make()
        return self.tables[key]


@dataclass
class Costs:
    """What an estimate adds up over the blocks, per token: multiply-adds of weight matrices, attention FLOPs,
    activation elements kept for the backward pass, KV-cache bytes. `seq_len` and `nbytes` are the estimate's."""

    seq_len: int
    nbytes: int
    dropout_mask: float = 0  # values per residual-branch output that dropout keeps (a one-byte mask: C / 4)
    matmul: int = 0
    attn_flops: float = 0.0
    act: int = 0
    kv_bytes: int = 0
    state_bytes: int = 0  # per sequence: the fixed-size state of recurrent and convolution layers (no KV cache)
    inactive_params: int = 0  # parameters a token does not use (experts a router did not choose)


def affine(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """weight @ x + bias for a vector x: one op (F.linear on a vector is a matmul plus a separate add)."""
    return torch.mv(weight, x) if bias is None else torch.addmv(bias, weight, x)


def unchanged(x):
    """An empty slot: the value passes through (cheaper than calling an nn.Identity)."""
    return x


def layer_states(cache) -> dict:
    """The recurrent and convolution states of one generation's layers, kept on its cache object beside the
    keys and values (our StaticCache, or the transformers Cache that `generate` passes): layer slot -> state.
    Attention layers need the past tokens' keys; a Mamba2 or short-convolution layer needs only this fixed-size
    summary of them."""
    states = getattr(cache, "slm_states", None)
    if states is None:
        states = cache.slm_states = {}
    return states
