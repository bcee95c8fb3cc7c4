"""Tests for slm_blocks.training.tokenization: round trips, saved files that plain transformers reads,
exact and fast whole-text encoding, and clear errors."""
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from slm_blocks.training.data import DataConfig, load_corpus
from slm_blocks.training.tokenization import (TOKENIZER_KINDS, build_tokenizer, encode, load_tokenizer,
                                     save_tokenizer)

_REF = Path("/work/shared/data/tinyshakespeare.txt")  # a realistic ~1 MB text; stories if absent
SHAKESPEARE = (_REF.read_text(encoding="utf-8") if _REF.exists()
               else load_corpus(DataConfig()).train_text[:1_100_000])
TRICKY = ("Hello,  world!\n\n\tTabs\n  indented line\r\nwindows\u00a0nbsp caf\u00e9 e\u0301 \u65e5\u672c "
          "\U0001f916 \U0001f469\u200d\U0001f467 <|x|>")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def toks():
    return {"char": build_tokenizer("char", text=SHAKESPEARE + TRICKY),
            "byte": build_tokenizer("byte"),
            "bpe": build_tokenizer("bpe", text=SHAKESPEARE, vocab_size=600)}


def roundtrip(tok, s: str) -> str:
    return tok.decode(tok.encode(s, add_special_tokens=False))


def test_kinds():
    assert TOKENIZER_KINDS == ("char", "byte", "bpe", "pretrained")


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_specials_and_roundtrip(toks, kind):
    tok = toks[kind]
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.eos_token_id != tok.pad_token_id
    assert max(tok.get_vocab().values()) == len(tok) - 1  # ids fit the model's embedding
    assert roundtrip(tok, TRICKY) == TRICKY
    assert roundtrip(tok, SHAKESPEARE[:5000]) == SHAKESPEARE[:5000]
    assert tok.encode("ab") == tok.encode("ab", add_special_tokens=False)  # nothing added silently
    assert roundtrip(tok, "a<|endoftext|>b") == "a<|endoftext|>b"


def test_char_vocab_is_the_characters(toks):
    tok = build_tokenizer("char", text="hello world\n")
    assert len(tok) == 3 + len(set("hello world\n"))
    assert tok.encode("lol") == [tok.convert_tokens_to_ids(c) for c in "lol"]
    assert roundtrip(tok, "  hello\n\nworld  ") == "  hello\n\nworld  "
    assert tok.convert_ids_to_tokens(tok.encode("z")) == ["<|unk|>"]  # unseen char
    assert len(toks["char"]) == 3 + len(set(SHAKESPEARE + TRICKY))


def test_byte_ids_are_utf8_bytes(toks):
    tok = toks["byte"]
    assert len(tok) == 259
    s = "h\u00e9 \U0001f916\n"
    assert tok.encode(s) == list(s.encode("utf-8"))


@FAST
@given(st.text(max_size=200))
def test_byte_and_bpe_roundtrip_any_text(toks, s):
    for kind in ("byte", "bpe"):
        assert roundtrip(toks[kind], s) == s


@FAST
@given(st.text(alphabet=sorted(set(SHAKESPEARE)), max_size=200))
def test_char_roundtrip_seen_chars(toks, s):
    assert roundtrip(toks["char"], s) == s


def test_bpe_vocab_size_and_compression(toks):
    tok = toks["bpe"]
    assert len(tok) == 600
    n = len(encode(tok, SHAKESPEARE[:100_000]))
    assert n < 0.6 * 100_000  # merges actually learned
    with pytest.raises(ValueError, match="at least 259"):
        build_tokenizer("bpe", text=SHAKESPEARE, vocab_size=200)
    with pytest.raises(ValueError, match="at least 259"):
        build_tokenizer("bpe", text=SHAKESPEARE)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_text_required(kind):
    with pytest.raises(ValueError, match="no text"):
        build_tokenizer(kind, text="", vocab_size=300)


def test_unknown_kind():
    with pytest.raises(ValueError, match="tokenizer kind 'word' is unknown"):
        build_tokenizer("word", text="abc")


# ---------------------------------------------------------------- encode
@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_encode_whole_text_exact(toks, kind):
    tok = toks[kind]
    text = SHAKESPEARE + "\n  \n" + TRICKY + "\n\n\nend"
    ids = encode(tok, text)
    assert ids.dtype == torch.int64 and ids.dim() == 1
    assert ids.tolist() == tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids.tolist()) == text
    assert encode(tok, "").tolist() == []


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_encode_in_small_pieces_matches_whole_text(toks, kind, monkeypatch):
    import slm_blocks.training.tokenization as T

    text = "".join(f"line {c}\n  indented, {c}\n\n\tx <|endoftext|>\n \n" for c in "abcdefgh" * 25) + TRICKY
    # a BPE that has learned merges like "\n " which a careless cut would break
    tok = build_tokenizer("bpe", text=text, vocab_size=400) if kind == "bpe" else toks[kind]
    monkeypatch.setattr(T, "_CHUNK", 5)  # a cut wanted in every line: only safe ones may be used
    ids = encode(tok, text).tolist()
    assert ids == tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text


def test_char_lookup_matches_the_tokenizer_on_unseen_chars_and_specials(tmp_path):
    tok = build_tokenizer("char", text="abc \n")
    save_tokenizer(tok, tmp_path)
    text = "abz<|pad|>\U0001f916c <|endoftext|><|endof\u00e9\n\x00"
    for t in (tok, load_tokenizer(tmp_path)):
        ids = encode(t, text).tolist()
        assert ids == t.backend_tokenizer.encode(text, add_special_tokens=False).ids
        plain = text.replace("<|pad|>", "").replace("<|endoftext|>", "")
        assert ids.count(t.unk_token_id) == sum(c not in "abc \n" for c in plain) == 11
    assert len(encode(tok, "abc \n" * 2_000_000)) == 10_000_000


def test_encode_ignores_and_keeps_truncation(toks):
    tok = build_tokenizer("byte")
    tok.backend_tokenizer.enable_truncation(max_length=8)
    assert len(encode(tok, "x" * 100)) == 100
    assert tok.backend_tokenizer.truncation["max_length"] == 8


# ---------------------------------------------------------------- save / load / pretrained
@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_save_and_load_with_plain_transformers(toks, kind, tmp_path):
    tok = toks[kind]
    save_tokenizer(tok, tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    for back in (AutoTokenizer.from_pretrained(str(tmp_path)), load_tokenizer(tmp_path)):
        assert len(back) == len(tok)
        assert (back.eos_token, back.pad_token) == (tok.eos_token, tok.pad_token)
        assert back.encode(TRICKY, add_special_tokens=False) == tok.encode(TRICKY, add_special_tokens=False)
        assert roundtrip(back, TRICKY) == TRICKY


def test_load_tokenizer_missing(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer found"):
        load_tokenizer(tmp_path / "nothing")


def test_pretrained_from_local_folder_gets_a_pad_token(toks, tmp_path):
    save_tokenizer(toks["bpe"], tmp_path)
    cfg_path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["pad_token"]
    cfg_path.write_text(json.dumps(cfg))
    tok = build_tokenizer("pretrained", name_or_path=str(tmp_path))
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert len(tok) == 600 and roundtrip(tok, TRICKY) == TRICKY


def test_pretrained_errors():
    with pytest.raises(ValueError, match="tokenizer name 'nobody/no-such-tokenizer' could not be loaded"):
        build_tokenizer("pretrained", name_or_path="nobody/no-such-tokenizer")
    with pytest.raises(ValueError, match="tokenizer name is empty"):
        build_tokenizer("pretrained")
