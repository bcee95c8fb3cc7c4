"""Tokenizers the model can train with, all as `PreTrainedTokenizerFast` so an exported model
loads with `AutoTokenizer` in plain `transformers`.

Named tokenization.py, not tokenizers.py: that name would shadow the `tokenizers` library.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .schema import Problem, SettingsError, parse_record, setting, short

TOKENIZER_KINDS = ("char", "byte", "bpe", "pretrained")
EOS, PAD, UNK = "<|endoftext|>", "<|pad|>", "<|unk|>"
SPECIALS = [EOS, PAD, UNK]  # ids 0-2 for char and bpe; 256-258 for byte, so byte ids equal byte values
BPE_MIN_VOCAB = 256 + len(SPECIALS)  # every byte, then the special tokens: merges come on top


@dataclass
class TokenizerConfig:
    kind: Literal["char", "byte", "bpe", "pretrained"] = setting(
        "char", advanced=False, label="Tokenizer", help="char: one token per character · byte: 256 bytes · bpe: "
        "merges learned on your data · pretrained: an existing tokenizer")
    vocab_size: int | None = setting(None, lo=BPE_MIN_VOCAB, hi=1 << 20, advanced=False, label="BPE vocab size",
                                     help="tokens a bpe tokenizer learns (bpe only)", empty="bpe needs a size")
    name_or_path: str | None = setting(None, advanced=False, label="Pretrained tokenizer",
                                       help="a Hub id 'owner/name' (the command line also takes a local folder)",
                                       empty="pretrained needs a name")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "name_or_path": self.name_or_path}

    @classmethod
    def from_dict(cls, d: dict) -> "TokenizerConfig":
        problems: list[Problem] = []
        cfg = parse_record(cls, d, "", problems)
        problems += cfg.problems()
        if problems:
            raise SettingsError(problems, "tokenizer settings")
        return cfg

    def problems(self, path: str = "", app: bool = False) -> list[Problem]:
        from .data import is_hub_id

        at = (lambda name: f"{path}.{name}" if path else name)  # noqa: E731
        out = []
        if self.kind == "bpe" and self.vocab_size is None:
            out.append(Problem(at("vocab_size"), f"is empty: a bpe tokenizer needs a size, at least {BPE_MIN_VOCAB} "
                               "(256 bytes + 3 special tokens), e.g. 1024"))
        if self.kind != "bpe" and self.vocab_size is not None:
            source = "the data" if self.kind == "char" else "the tokenizer itself"
            out.append(Problem(at("vocab_size"), f"is only used by the bpe tokenizer; leave it empty for "
                               f"{self.kind} (its vocabulary comes from {source})"))
        if self.kind == "pretrained":
            name = (self.name_or_path or "").strip()
            if not name:
                out.append(Problem(at("name_or_path"), "is empty: a pretrained tokenizer needs a Hub id such as "
                                   "'openai-community/gpt2'"))
            elif app and not is_hub_id(self.name_or_path):  # as given: no whitespace around it either
                out.append(Problem(at("name_or_path"), f"{short(name)} is not a Hub id; use 'owner/name', e.g. "
                                   "'openai-community/gpt2' (the app does not read local folders)"))
        elif self.name_or_path is not None:
            out.append(Problem(at("name_or_path"), f"is only used by the pretrained tokenizer; leave it empty for "
                               f"{self.kind}"))
        return out


def token_ids(tok) -> dict:
    """bos / eos / pad ids a model config needs (bos falls back to eos: our tokenizers have no separate BOS)."""
    return {"bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def _bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable stand-in character, the mapping the ByteLevel pre-tokenizer uses:
    printable Latin-1 bytes stand for themselves, the rest are shifted past U+0100."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out, shift = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + shift)
            shift += 1
    return out


def _wrap(tk: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=EOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, clean_up_tokenization_spaces=False)


def _char_split() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split("", "isolated")


def _char(text: str) -> PreTrainedTokenizerFast:
    vocab = {s: i for i, s in enumerate(SPECIALS + sorted(set(text)))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tk.pre_tokenizer = _char_split()  # one piece per character, spaces included
    tk.decoder = decoders.Fuse()  # join pieces with nothing in between
    tk.add_special_tokens(SPECIALS)
    return _wrap(tk)


def _byte_level(tk: Tokenizer, use_regex: bool) -> Tokenizer:
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    tk.decoder = decoders.ByteLevel()
    return tk


def _byte() -> PreTrainedTokenizerFast:
    """BPE with no merges over the 256 byte symbols: id == byte value, any UTF-8 text round-trips."""
    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    vocab.update({s: 256 + i for i, s in enumerate(SPECIALS)})
    tk = _byte_level(Tokenizer(models.BPE(vocab=vocab, merges=[])), use_regex=False)
    tk.add_special_tokens(SPECIALS)
    return _wrap(tk)


def _bpe(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level BPE: merges never cross word boundaries, unseen text still encodes."""
    tk = _byte_level(Tokenizer(models.BPE()), use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_chunks(text, _CHUNK), trainer)
    return _wrap(tk)


def _pretrained(name_or_path: str) -> PreTrainedTokenizerFast:
    from .hub_access import read_token

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False, token=read_token())
    except Exception as e:  # offline, unknown id, bad folder: all mean "fix the name"
        msg = " ".join(str(e).split())[:300]
        raise ValueError(f"tokenizer name '{name_or_path}' could not be loaded ({type(e).__name__}: {msg}); "
                         f"check the Hub id and your connection, or give a local tokenizer folder.") from e
    if tok.eos_token is None:  # generation needs a stop token; add one rather than guess
        tok.add_special_tokens({"eos_token": EOS})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_tokenizer(kind: str, text: str | None = None, vocab_size: int | None = None,
                    name_or_path: str | None = None) -> PreTrainedTokenizerFast:
    """Build a tokenizer; `len(tok)` is the vocabulary size the model must use."""
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer kind '{kind}' is unknown; choose one of {', '.join(TOKENIZER_KINDS)}.")
    if kind == "byte":
        return _byte()
    if kind == "pretrained":
        if not name_or_path:
            raise ValueError("tokenizer name is empty: a 'pretrained' tokenizer needs a Hub id or local folder.")
        return _pretrained(name_or_path)
    if not text:
        raise ValueError(f"a '{kind}' tokenizer is built from the training text, but no text was given.")
    if kind == "char":
        return _char(text)
    if vocab_size is None or vocab_size < BPE_MIN_VOCAB:
        raise ValueError(f"vocab_size for a 'bpe' tokenizer must be at least {BPE_MIN_VOCAB} (256 bytes + "
                         f"{len(SPECIALS)} special tokens); got {vocab_size}.")
    return _bpe(text, vocab_size)


def save_tokenizer(tok: PreTrainedTokenizerFast, out_dir: str | Path) -> None:
    """save_pretrained, but readable by transformers 4 too: v5 writes the class name
    'TokenizersBackend', which v4 does not know; 'PreTrainedTokenizerFast' loads in both."""
    out = Path(out_dir)
    tok.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.get("tokenizer_class") in (None, "TokenizersBackend") and (out / "tokenizer.json").exists():
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("local_files_only", "is_local"):  # load-time flags of ours, not properties of the tokenizer
        cfg.pop(key, None)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer folder written by save_tokenizer (local only: never runs remote code)."""
    p = Path(path)
    if not (p / "tokenizer_config.json").is_file():
        raise ValueError(f"no tokenizer found in {p} (tokenizer_config.json is missing).")
    return AutoTokenizer.from_pretrained(str(p), trust_remote_code=False, local_files_only=True)


_BOUNDARY = re.compile(r"(?<=\n)(?=\S)")
_CHUNK = 1 << 16  # chars per encode piece


def _chunks(text: str, size: int) -> list[str]:
    """Pieces of about `size` chars cut only where a newline meets a non-space character.
    Byte-level and char pre-tokenizers always split there, so encoding piece by piece gives the
    same ids as encoding the whole text, with less memory and both CPU cores busy."""
    out, start = [], 0
    while start < len(text):
        m = _BOUNDARY.search(text, min(start + size, len(text)))
        end = m.start() if m else len(text)
        out.append(text[start:end])
        start = end
    return out


def _char_ids(backend: Tokenizer, text: str) -> torch.Tensor | None:
    """A char tokenizer is a lookup table: indexing one is ~10x faster than pre-tokenizing
    every character. Returns None for any other tokenizer."""
    if (str(backend.pre_tokenizer) != str(_char_split()) or backend.normalizer is not None
            or not isinstance(backend.model, models.WordLevel)):
        return None
    vocab, unk = backend.get_vocab(), backend.model.unk_token
    if unk not in vocab:
        return None
    chars = {ord(k): v for k, v in vocab.items() if len(k) == 1}
    lut = torch.full((max(chars, default=0) + 2,), vocab[unk], dtype=torch.long)  # last slot: unk
    lut[list(chars)] = torch.tensor(list(chars.values()), dtype=torch.long)
    specials = sorted((t.content for t in backend.get_added_tokens_decoder().values()), key=len, reverse=True)
    parts = re.split("(" + "|".join(map(re.escape, specials)) + ")", text) if specials else [text]
    out = []
    for j, part in enumerate(parts):  # odd parts are special tokens written in the text
        if j % 2:
            out.append(torch.tensor([vocab[part]]))
        elif part:
            cps = torch.frombuffer(bytearray(part.encode("utf-32-le")), dtype=torch.int32).long()
            out.append(lut[cps.clamp_(max=len(lut) - 1)])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def encode(tok: PreTrainedTokenizerFast, text: str) -> torch.Tensor:
    """All ids of `text` as a 1-D int64 tensor, without special tokens (BOS/EOS) added."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and (ids := _char_ids(backend, text)) is not None:
        return ids
    if backend is None:  # a slow tokenizer: same result, just slower
        ids = [tok.encode(c, add_special_tokens=False) for c in _chunks(text, _CHUNK)]
        return torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.long)
    if backend.truncation is not None or backend.padding is not None:
        backend = Tokenizer.from_str(backend.to_str())  # a copy, so the caller's settings stay
        backend.no_truncation()
        backend.no_padding()
    encs = backend.encode_batch_fast(_chunks(text, _CHUNK), add_special_tokens=False)
    return torch.tensor(list(itertools.chain.from_iterable(e.ids for e in encs)), dtype=torch.long)
