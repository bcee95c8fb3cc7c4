"""The memory of attention that grows with the square of the context: what `estimate()` adds to the
per-token activations, and what one inference call in the app may allocate.

Which attention path runs decides it (model/blocks/attention.py, torch's CPU kernels, measured in
tests/model/test_memory.py):

- `scaled_dot_product_attention` without dropout runs a fused kernel that never materialises the (T, S)
  scores, with or without a mask. What is T² then is the mask itself, built once per forward and shared by the
  layers (AttentionContext.masks): ALiBi's float bias (1, heads, T, S), kept until the backward pass is over,
  and while it is built a second copy plus an int64 (T, S) distance table; a sliding window's bool (T, S), which
  the kernel turns into a float (T, S) in every layer (kept for the backward pass while training).
- With attention dropout while training, torch falls back to the plain path: every such layer keeps its
  probabilities, the dropout mask and the dropped probabilities for the backward pass (3 × B·heads·T·S
  values), and briefly the raw scores of the layer being computed.
- Explain mode (the app's attention maps) keeps every layer's probabilities (B, heads, T, S) and briefly two
  more of that size in the layer being computed.

Each is given as an `AttentionMemory`: bytes kept through the step, bytes that exist only while the last layer
computes (on top of everything kept), and the peak while the masks are built, at the start of the forward,
before activations pile up. The caller's peak is max(activations + kept + while_computing, at_start).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionMemory:
    kept: int = 0  # kept from the forward to the end of the backward (or the end of the call)
    while_computing: int = 0  # briefly, in the layer being computed, on top of `kept`
    at_start: int = 0  # the peak while the masks are built (before any activation is kept)

    def peak(self, activations: int) -> int:
        """Peak bytes of activations + attention, given the activations kept at the end of the forward."""
        return max(activations + self.kept + self.while_computing, self.at_start)


def attention_memory(spec, batch_size: int, seq_len: int, mode: str = "train", nbytes: int = 4) -> AttentionMemory:
    """T²-sized memory of one forward (and backward when `mode` is "train") of `batch_size` sequences of
    `seq_len` tokens. mode: "train", "infer" (a prompt, no gradients) or "explain" (attention maps kept)."""
    if mode not in ("train", "infer", "explain"):
        raise ValueError(f"mode must be train, infer or explain, got {mode!r}")
    B, T = batch_size, seq_len
    alibi = spec.positional() == "alibi"
    masks: dict[tuple, tuple[int, int]] = {}  # memo key as AttentionContext uses it -> (kept, building)
    kept = computing = 0
    for _block, a, window in spec.layer_plan():
        if a is None:
            continue
        H = a.n_heads
        windowed = window is not None and window < T
        if alibi:  # float bias (1, H, T, T); built from an int64 distance table and a second float copy
            masks[(window if windowed else None, H)] = (H * T * T * nbytes, H * T * T * nbytes + 9 * T * T)
        elif windowed:  # bool (1, 1, T, T), from an int64 distance table; each layer's kernel call turns it into
            masks[(window, 0)] = (T * T, 9 * T * T)  # a float mask, which training keeps for the backward pass
            if mode == "train":
                kept += T * T * nbytes
            else:
                computing = max(computing, T * T * nbytes)
        scores = B * H * T * T * nbytes
        if mode == "train" and a.dropout > 0:  # the plain path: probabilities, dropout mask, dropped probabilities
            kept += 3 * scores
            computing = max(computing, scores)
        elif mode == "explain":  # the probabilities of every layer are the output; scores and masked copy briefly
            kept += scores
            computing = max(computing, 2 * scores)
    mask_kept = sum(k for k, _ in masks.values())
    building = max((b for _, b in masks.values()), default=0)
    return AttentionMemory(kept + mask_kept, computing, mask_kept + building)


def inference_extra_bytes(spec, tokens: int, explain: bool = False, cache_len: int | None = None) -> int:
    """Peak bytes one app call allocates beyond the weights for a prompt of `tokens` tokens (batch 1): the
    key/value cache of `cache_len` positions (generation; 0 for a plain forward), the largest layer's transient
    activations, the logits and the attention memory of the path it takes."""
    T, C = tokens, spec.d_model
    widest = 0  # floats per token that one layer holds at once (its q/k/v and outputs, or its MLP hidden)
    for _block, a, _window in spec.layer_plan():
        if a is not None:
            hd = a.head_size(C)
            widest = max(widest, 3 * (a.n_heads + 2 * a.kv_heads()) * hd)
        mlp = getattr(_block, "mlp", None)
        if mlp is not None:
            widest = max(widest, 3 * mlp.hidden_size(C))
    activations = (widest + 4 * C) * T * 4 + spec.vocab_size * T * 4  # + the residual stream and the logits
    kv_per_token = sum(2 * a.kv_heads() * a.head_size(C) * 4 for _, a, _ in spec.layer_plan() if a is not None)
    cache = kv_per_token * (cache_len or 0)  # fp32 keys and values (estimate.py imports this module)
    return cache + attention_memory(spec, 1, T, "explain" if explain else "infer").peak(activations)
