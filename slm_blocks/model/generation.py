"""Text generation for the app and CLI: a lean sampling loop over a preallocated KV cache.

`model.generate()` works on our models too, but for a small model on a CPU most of its time per token
is bookkeeping (logits processors, stopping criteria, output objects, a growing cache), not the model.
This loop does only what a token needs: one forward of the new token into a static cache, then the
same logits processing as transformers (repetition penalty, temperature, top-k, top-p, in that order),
so `stream_tokens` with temperature 0 reproduces `generate(do_sample=False)` token for token, and with
a seed it draws the same tokens as `torch.manual_seed(seed); generate(do_sample=True)`.

Past the model's context (`max_seq_len`) the history is cropped to its most recent half and
re-prefilled: learned positions simply do not exist beyond max_seq_len, and for the other encodings
the model was never trained there.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Iterator

import torch

from .blocks.attention import Attention, AttentionContext
from .decode import Decoder


@dataclass
class SamplingConfig:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy (argmax)
    top_k: int | None = 50  # keep the k most likely tokens (None = all)
    top_p: float | None = None  # keep the smallest set with cumulative probability >= top_p (None = all)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the output
    seed: int | None = None  # None = torch's global random generator

    def validate(self) -> "SamplingConfig":
        """Raise ValueError naming the first bad field; the message reaches the UI verbatim."""
        def number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def whole(v):
            return isinstance(v, int) and not isinstance(v, bool)

        if not whole(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a whole number >= 1, got {self.max_new_tokens!r}")
        if not number(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if self.top_k is not None and (not whole(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be a whole number >= 1 or None, got {self.top_k!r}")
        if self.top_p is not None and (not number(self.top_p) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")
        rp = self.repetition_penalty
        if not number(rp) or not math.isfinite(rp) or rp <= 0:
            raise ValueError(f"repetition_penalty must be a finite number > 0 (1 = off), got {rp!r}")
        if self.seed is not None and not whole(self.seed):
            raise ValueError(f"seed must be a whole number or None, got {self.seed!r}")
        return self


class StaticCache:
    """Keys/values of every attention layer in buffers allocated once, (B, nkv, max_len, hd) each.

    `update` copies the new positions in place and returns views of the filled part, so a decode step
    allocates no cache memory (transformers' DynamicCache concatenates a new tensor per layer per token).
    It speaks the part of the transformers Cache interface our attention uses, so it can be passed as
    `cache=` to SLMForCausalLM.forward as well as used by the loop below.
    """

    def __init__(self, model, max_len: int | None = None, batch_size: int = 1):
        layers = sorted((m for m in model.modules() if isinstance(m, Attention)), key=lambda m: m.cache_index)
        self.max_len = max_len or model.config.max_position_embeddings
        p = next(model.parameters())
        # keys and values of a layer share one buffer (2, B, nkv, max_len, hd), so the decode step can write a
        # position's keys and values with one copy
        self.kv = [torch.zeros(2, batch_size, a.n_kv_heads, self.max_len, a.head_dim, dtype=p.dtype, device=p.device)
                   for a in layers]
        self.keys = [kv[0] for kv in self.kv]  # (B, nkv, max_len, hd) views
        self.values = [kv[1] for kv in self.kv]
        self.lengths = [0] * len(layers)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        start = self.lengths[layer_idx]
        end = start + key.shape[2]
        if end > self.max_len:
            raise ValueError(f"StaticCache holds {self.max_len} positions; {end} do not fit")
        self.keys[layer_idx][:, :, start:end] = key
        self.values[layer_idx][:, :, start:end] = value
        self.lengths[layer_idx] = end
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]  # (B, nkv, end, hd)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx] if self.lengths else 0

    def reset(self) -> None:
        """Forget all positions; the buffers are kept (stale values are never read: views stop at the length)."""
        self.lengths = [0] * len(self.lengths)
        self.__dict__.pop("slm_states", None)  # the recurrent / convolution states (assembly.layer_states) too


# ----------------------------------------------------------------------------- logits processing


def process_logits(logits: torch.Tensor, cfg: SamplingConfig, seen: torch.Tensor | None = None) -> torch.Tensor:
    """transformers' RepetitionPenalty -> Temperature -> TopK -> TopP processors on (..., V) logits.

    `seen` is a (..., V) bool mask of tokens already in the context (only read when the penalty is on).
    Same operations in the same order as transformers, so the results are bitwise equal.
    Temperature 0 (greedy) only applies the penalty: the caller takes the argmax.
    """
    if cfg.repetition_penalty != 1.0 and seen is not None:
        penalized = torch.where(logits < 0, logits * cfg.repetition_penalty, logits / cfg.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if cfg.temperature == 0:
        return logits
    if cfg.temperature != 1.0:
        logits = logits / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k)[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - cfg.top_p)
        remove[..., -1:] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(-1, order, remove), -math.inf)
    return logits


# ----------------------------------------------------------------------------- the loop


def _ids_list(model, input_ids) -> list[int]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 2 and input_ids.shape[0] != 1:
            raise ValueError(f"input_ids must hold one sequence, shape (1, T); got {tuple(input_ids.shape)}")
        if input_ids.dim() not in (1, 2):
            raise ValueError(f"input_ids must have shape (1, T), got {tuple(input_ids.shape)}")
        input_ids = input_ids.reshape(-1).tolist()
    ids = [int(i) for i in input_ids]
    if not ids:
        raise ValueError("input_ids is empty: give at least one prompt token")
    V = model.config.vocab_size
    if min(ids) < 0 or max(ids) >= V:
        raise ValueError(f"input_ids must be token ids in [0, {V}); got {min(ids)}..{max(ids)}")
    return ids


def _logits(model, ids: torch.Tensor, start: int, cache: StaticCache | None) -> torch.Tensor:
    """Float logits (V,) after `ids` (1, T) placed at positions start..start+T-1.

    Calls the body and the head directly: SLMForCausalLM.forward adds only mask/position bookkeeping we
    do not need here, and building a ModelOutput per token costs ~7% at tiny-char size."""
    pos = torch.arange(start, start + ids.shape[1], device=ids.device)[None]  # (1, T)
    x = model.model(ids, pos, AttentionContext(key_padding=None, cache=cache))  # (1, T, C)
    return model.lm_head(x[:, -1])[0].float()  # (V,)


def stream_tokens(model, input_ids, cfg: SamplingConfig | None = None, stop: threading.Event | None = None,
                  eos_token_id: int | list[int] | None = None) -> Iterator[int]:
    """Yield new token ids one at a time; stops after eos (which is yielded, as generate() keeps it),
    max_new_tokens, or once `stop` is set (checked before every token).

    Grad is off only inside each step (inference_mode is thread state and must not leak to the
    consumer between yields). The model is used as is: call model.eval() first when it has dropout.
    """
    cfg = (cfg or SamplingConfig()).validate()
    history = _ids_list(model, input_ids)
    eos = set() if eos_token_id is None else {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    device = model.lm_head.weight.device
    max_len = model.config.max_position_embeddings
    keep = max(1, max_len // 2)  # tokens kept when the context overflows
    cache = StaticCache(model, max_len)
    gen = None if cfg.seed is None else torch.Generator(device).manual_seed(cfg.seed)
    seen = None
    with torch.inference_mode():
        # one new token: the lean decode step (decode.py) where it covers the model, else the module forward
        if Decoder.unsupported(model) is None:
            step = Decoder(model, cache)
        else:
            def step(token, pos):
                return _logits(model, token.view(1, 1), pos, cache)
        if cfg.repetition_penalty != 1.0:
            seen = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
            seen[torch.tensor(history, device=device)] = True
        prefix = history[-max_len:]
        logits = _logits(model, torch.tensor([prefix], device=device), 0, cache)
    pos = len(prefix)  # positions filled in the cache
    nxt = None  # the token yielded last (a 0-d tensor), not yet in the cache
    for _ in range(cfg.max_new_tokens):
        if stop is not None and stop.is_set():
            return
        with torch.inference_mode():  # one block per token: entering inference mode has a cost too
            if nxt is not None:  # (only now, so no forward is spent on a token nobody asks to follow)
                if seen is not None:
                    seen[nxt] = True
                if pos < max_len:
                    logits = step(nxt, pos)
                    pos += 1
                else:  # context full: keep the most recent tokens and prefill them again
                    cache.reset()
                    logits = _logits(model, torch.tensor([history[-keep:]], device=device), 0, cache)
                    pos = min(keep, len(history))
            scores = process_logits(logits, cfg, seen)
            if cfg.temperature == 0:
                nxt = scores.argmax()
            else:
                nxt = torch.multinomial(scores.softmax(-1), 1, generator=gen)[0]
            tok = int(nxt)
        yield tok
        if tok in eos:
            return
        history.append(tok)


# ----------------------------------------------------------------------------- text


def _encode(tokenizer, prompt: str) -> list[int]:
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt is empty: type some text for the model to continue")
    ids = tokenizer.encode(prompt, add_special_tokens=False)  # as in training, which adds no BOS/EOS
    if not ids:
        raise ValueError("prompt encodes to no tokens: type some text for the model to continue")
    return ids


def _decode_new(tokenizer, anchor: list[int], new: list[int]) -> str:
    """Text of `new`, decoded after the last prompt tokens so tokenizers that drop a leading space on the
    first token (SentencePiece) keep it; whole-list decoding turns split UTF-8 characters into one char."""
    head = tokenizer.decode(anchor, skip_special_tokens=True)
    full = tokenizer.decode(anchor + new, skip_special_tokens=True)
    return full[len(head):] if full.startswith(head) else tokenizer.decode(new, skip_special_tokens=True)


def stream_text(model, tokenizer, prompt: str, cfg: SamplingConfig | None = None,
                stop: threading.Event | None = None) -> Iterator[str]:
    """Yield the growing continuation of `prompt` (not including it). A step that ends in the middle of a
    multi-byte character ("\\ufffd") is held back until the character is complete."""
    ids = _encode(tokenizer, prompt)
    anchor, new, shown = ids[-4:], [], None
    for tok in stream_tokens(model, torch.tensor([ids]), cfg, stop, tokenizer.eos_token_id):
        new.append(tok)
        text = _decode_new(tokenizer, anchor, new)
        if text != shown and not text.endswith("\ufffd"):
            shown = text
            yield text
    if new:
        text = _decode_new(tokenizer, anchor, new)
        if text != shown:  # the output really ends in an incomplete character
            yield text


def generate_text(model, tokenizer, prompt: str, cfg: SamplingConfig | None = None) -> str:
    """The whole continuation of `prompt` as one string (decoded once at the end)."""
    ids = _encode(tokenizer, prompt)
    new = list(stream_tokens(model, torch.tensor([ids]), cfg, None, tokenizer.eos_token_id))
    return _decode_new(tokenizer, ids[-4:], new)


@torch.inference_mode()
def next_token_distribution(model, input_ids, top: int = 10, temperature: float = 1.0) -> list[tuple[int, float]]:
    """The `top` most likely next tokens as (id, probability), most likely first, for the app's
    "what the model thinks next" view. Temperature 0 puts all the probability on the argmax."""
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ValueError(f"top must be a whole number >= 1, got {top!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    ids = _ids_list(model, input_ids)[-model.config.max_position_embeddings:]
    logits = _logits(model, torch.tensor([ids], device=model.lm_head.weight.device), 0, None)
    if temperature == 0:
        probs = torch.zeros_like(logits).scatter_(0, logits.argmax()[None], 1.0)
    else:
        probs = (logits / temperature).softmax(-1)
    p, i = probs.topk(min(top, probs.shape[0]))
    return list(zip(i.tolist(), p.tolist()))
