"""The tokenizer inside a GGUF file: our char / byte / BPE tokenizers as a llama.cpp "gpt2" (byte-level BPE)
vocabulary.

llama.cpp's byte-level BPE splits text with a regex ("gpt-2" pre-tokenizer), spells each piece's UTF-8 bytes
with GPT-2's printable stand-ins (space -> "Ġ", newline -> "Ċ") and applies the merges in rank order. Each of
our tokenizers fits that exactly:

- byte: 256 single-byte tokens spelled the same way and no merges, so ids equal byte values everywhere;
- bpe: already GPT-2 style byte-level BPE with the GPT-2 regex: the tokens and merges are copied as they are;
- char: one token per character and no merges. Exact only when every character is one byte (ASCII): a
  character like "é" is two bytes, which llama.cpp could only join with a merge whose halves are tokens too;
  such vocabularies are refused with the reason (train with the byte or bpe tokenizer instead).

Special tokens (<|endoftext|>, <|pad|>, <|unk|>) are CONTROL tokens; no BOS is added, as in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..training.tokenization import _bytes_to_unicode

NORMAL, UNKNOWN, CONTROL = 1, 2, 3  # llama.cpp token types (gguf.TokenType)


class VocabError(ValueError):
    """A tokenizer that llama.cpp's vocabulary types cannot reproduce exactly; the message says why."""


@dataclass
class GGUFVocab:
    tokens: list[str]
    types: list[int]
    merges: list[str] = field(default_factory=list)  # "left right", best first
    bos: int | None = None
    eos: int | None = None
    pad: int | None = None
    unk: int | None = None
    model: str = "gpt2"  # tokenizer.ggml.model
    pre: str = "gpt-2"  # tokenizer.ggml.pre: the GPT-2 split regex
    kind: str = ""  # char | byte | bpe: what it was made from (for messages and the card)


def _describe(tok) -> dict:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise VocabError("this tokenizer is a slow (Python) tokenizer; only fast tokenizers can be written to GGUF")
    return json.loads(backend.to_str())


def _kind(d: dict) -> str:
    model, pre = d.get("model") or {}, d.get("pre_tokenizer") or {}
    if d.get("normalizer") is not None:
        raise VocabError("tokenizers with a normalizer (lowercasing, Unicode forms, ...) have no exact llama.cpp "
                         "equivalent; use the char, byte or bpe tokenizer")
    if model.get("type") == "WordLevel" and pre.get("type") == "Split":
        return "char"
    if model.get("type") == "BPE" and pre.get("type") == "ByteLevel":
        if not pre.get("use_regex", True):
            if model.get("merges"):
                raise VocabError("a byte-level BPE without the GPT-2 split regex has no llama.cpp pre-tokenizer")
            return "byte"
        return "bpe"
    raise VocabError(f"a {model.get('type')} tokenizer with a {pre.get('type')} pre-tokenizer has no exact llama.cpp "
                     "vocabulary type; use the char, byte or bpe tokenizer")


def gguf_vocab(tok, vocab_size: int) -> GGUFVocab:
    """The GGUF vocabulary of a fast tokenizer with `vocab_size` ids (the model's); VocabError if impossible."""
    d = _describe(tok)
    kind = _kind(d)
    spelled = _bytes_to_unicode()
    specials = {t["id"]: t["content"] for t in d.get("added_tokens") or []}
    vocab = dict(d["model"]["vocab"])
    by_id: dict[int, str] = {}
    for text, i in vocab.items():
        if i in specials:
            continue
        if kind == "char":
            raw = text.encode("utf-8")
            if len(raw) != 1:
                raise VocabError(f"the char vocabulary holds {text!r}, a character of {len(raw)} bytes; llama.cpp's "
                                 "byte-level vocabulary can only spell one-byte (ASCII) characters as single tokens. "
                                 "Train with the byte or bpe tokenizer to export this model to GGUF")
            text = spelled[raw[0]]
        by_id[i] = text
    by_id.update(specials)
    if sorted(by_id) != list(range(len(by_id))):
        raise VocabError("the tokenizer's ids are not contiguous from 0; it cannot be written as a GGUF token list")
    if len(by_id) != vocab_size:
        raise VocabError(f"the tokenizer has {len(by_id)} tokens but the model {vocab_size}; they must match")
    tokens = [by_id[i] for i in range(len(by_id))]
    if len(set(tokens)) != len(tokens):
        raise VocabError("two tokens have the same spelling in byte-level form; llama.cpp could not tell them apart")
    merges = [m if isinstance(m, str) else " ".join(m) for m in d["model"].get("merges") or []]
    types = [CONTROL if i in specials else NORMAL for i in range(len(tokens))]

    def special(value) -> int | None:
        return tok.convert_tokens_to_ids(value) if value is not None else None

    return GGUFVocab(tokens, types, merges, bos=special(tok.bos_token), eos=special(tok.eos_token),
                     pad=special(tok.pad_token), unk=special(tok.unk_token), kind=kind)
