"""Tests for slm_blocks.training.data: every source, the leak-free split, and the errors users will hit."""
import json
import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pandas as pd
import pytest

from slm_blocks.training import data as D
from slm_blocks.training.data import Corpus, DataConfig, DataError, builtin_datasets, check_length, load_corpus, split_docs

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")


def files(*paths, **kw) -> Corpus:
    return load_corpus(DataConfig(source="files", paths=[str(p) for p in paths], **kw))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows(n: int, key: str = "text") -> list[dict]:
    return [{key: f"document number {i}: the quick brown fox.", "label": i} for i in range(n)]


# ---------------------------------------------------------------- config
def test_config_roundtrips_through_json():
    cfg = DataConfig(source="files", paths=["a.txt"], text_column="body", val_fraction=0.2, seed=3)
    back = DataConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg


def test_config_rejects_unknown_keys():
    with pytest.raises(DataError, match="sourse: is not a field of these settings"):
        DataConfig.from_dict({"sourse": "files"})


@pytest.mark.parametrize("cfg, field", [
    (DataConfig(source="ftp"), "source"),
    (DataConfig(name="poems"), "poems"),
    (DataConfig(val_fraction=0.0), "val_fraction"),
    (DataConfig(val_fraction=1.0), "val_fraction"),
    (DataConfig(max_chars=0), "max_chars"),
    (DataConfig(source="files"), "paths"),
    (DataConfig(source="hub"), "hub_id"),
])
def test_bad_settings_name_the_field(cfg, field):
    with pytest.raises(DataError, match=field):
        load_corpus(cfg)


# ---------------------------------------------------------------- built-ins
def test_builtin_list():
    assert set(builtin_datasets()) == {"stories", "addition"}


def test_stories_are_deterministic_and_varied():
    c = load_corpus(DataConfig())
    total = len(c.train_text) + len(c.val_text)
    assert 1_000_000 <= total <= 2_000_000
    assert 0.07 < len(c.val_text) / total < 0.13
    assert c.name == "builtin:stories" and c.eval_examples == []
    assert load_corpus(DataConfig()).train_text == c.train_text
    assert load_corpus(DataConfig(seed=1)).train_text != c.train_text
    text = c.train_text
    assert '"' in text and "," in text and "?" in text and "\n\n" in text
    assert text.count("Mira") > 100  # recurring names give the model something to learn
    assert len(set(text.split("\n\n"))) > 3000
    assert all(s[0].isupper() for s in re.split(r"(?<=[.!?]) ", text[:20_000]) if s and s[0].isalpha())


def test_stories_respect_max_chars():
    c = load_corpus(DataConfig(max_chars=50_000))
    assert len(c.train_text) + len(c.val_text) < 52_000


def test_addition_format_and_disjoint_split():
    c = load_corpus(DataConfig(name="addition"))
    line = re.compile(r"^(\d{1,3})\+(\d{1,3})=(\d{1,4})$")
    pairs = {}
    for split, text in (("train", c.train_text), ("val", c.val_text)):
        got = [line.match(s) for s in text.rstrip("\n").split("\n")]
        assert all(got)
        assert all(int(m[1]) + int(m[2]) == int(m[3]) for m in got)
        pairs[split] = [(int(m[1]), int(m[2])) for m in got]
    train = set(pairs["train"])
    assert not train & set(pairs["val"])
    assert not train & {(b, a) for a, b in pairs["val"]}  # no swapped copies either
    assert any(a < 10 for a, _ in pairs["val"]) and any(a >= 100 for a, _ in pairs["val"])
    assert 150 <= len(c.eval_examples) <= 250
    for prompt, answer in c.eval_examples:
        a, b = map(int, prompt.rstrip("=").split("+"))
        assert answer == str(a + b) and (a, b) in set(pairs["val"])
    assert load_corpus(DataConfig(name="addition")).val_text == c.val_text


# ---------------------------------------------------------------- split
def test_document_split_does_not_leak():
    docs = [f"<doc {i}> " + "words " * (i % 7 + 1) for i in range(500)]
    train, val, info = split_docs(docs, 0.1, seed=0)
    ids = lambda t: re.findall(r"<doc (\d+)>", t)  # noqa: E731
    tr, va = ids(train), ids(val)
    assert not set(tr) & set(va)
    assert sorted(tr + va, key=int) == [str(i) for i in range(500)]
    assert info["split"] == "documents" and 0.08 < len(val) / (len(train) + len(val)) < 0.14
    assert split_docs(docs, 0.1, seed=0) == (train, val, info)
    assert split_docs(docs, 0.1, seed=1)[1] != val


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="reference corpus not on this machine")
def test_one_long_text_splits_at_the_tail_on_a_newline():
    c = files(SHAKESPEARE)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    assert len(text) == 1_115_394
    assert c.train_text + c.val_text == text
    assert c.train_text.endswith("\n")
    assert 0.09 < len(c.val_text) / len(text) < 0.11
    assert c.describe()["split"] == "tail" and c.name == "files:tinyshakespeare.txt"


def test_val_split_empty_is_an_error(tmp_path):
    p = tmp_path / "word.txt"
    p.write_text("supercalifragilistic", encoding="utf-8")
    with pytest.raises(DataError, match="validation split .* is empty"):
        files(p)


# ---------------------------------------------------------------- files
def test_txt_md_and_several_files(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.md"
    a.write_text("line one\nline two\n" * 50, encoding="utf-8")
    b.write_bytes(("\ufeff" + "# Title\r\nsome *markdown* text\r\n" * 50).encode())
    c = files(a, b)
    both = c.train_text + c.val_text
    assert both.startswith("line one") and "# Title\nsome *markdown*" in both
    assert "\r" not in both and "\ufeff" not in both
    assert "line two\n\n\n# Title" in both  # files joined with a blank line
    assert c.name == "files:a.txt+1 more"


@pytest.mark.parametrize("ext", ["jsonl", "json", "csv", "parquet"])
def test_structured_files(tmp_path, ext):
    df = pd.DataFrame(rows(100))
    p = tmp_path / f"data.{ext}"
    {"jsonl": lambda: df.to_json(p, orient="records", lines=True),
     "json": lambda: df.to_json(p, orient="records"),
     "csv": lambda: df.to_csv(p, index=False),
     "parquet": lambda: df.to_parquet(p)}[ext]()
    c = files(p)
    got = re.findall(r"document number (\d+)", c.train_text + "\n\n" + c.val_text)
    assert sorted(map(int, got)) == list(range(100))
    assert c.describe()["split"] == "documents" and 9 <= c.describe()["val_docs"] <= 12


def test_text_column_guessing_and_choice(tmp_path):
    only = write_jsonl(tmp_path / "only.jsonl", rows(30, key="body"))
    assert "document number 0" in (lambda c: c.train_text + c.val_text)(files(only))
    two = write_jsonl(tmp_path / "two.jsonl", [{"a": "x y z", "b": "p q r", "n": 1}] * 30)
    with pytest.raises(DataError, match="available columns: a, b, n. Set text_column"):
        files(two)
    assert "p q r" in files(two, text_column="b").train_text
    with pytest.raises(DataError, match="text_column 'body' not found in two.jsonl; available columns: a, b, n"):
        files(two, text_column="body")
    with pytest.raises(DataError, match="text_column 'n' .* holds int"):
        files(two, text_column="n")


def test_max_chars_caps_rows_and_text(tmp_path):
    p = write_jsonl(tmp_path / "big.jsonl", rows(5000))
    c = files(p, max_chars=5_000)
    assert 4_000 < len(c.train_text) + len(c.val_text) < 5_200
    t = tmp_path / "big.txt"
    t.write_text("abc def\n" * 10_000, encoding="utf-8")
    c = files(t, max_chars=1_000)
    assert len(c.train_text) + len(c.val_text) == 1_000


def test_local_dataset_folder_via_files_and_hub(tmp_path):
    folder = tmp_path / "my_ds"
    (folder / "data").mkdir(parents=True)
    pd.DataFrame(rows(50)).to_parquet(folder / "data" / "train.parquet")
    pd.DataFrame(rows(5)).to_parquet(folder / "data" / "test.parquet")
    c = files(folder)
    assert "document number 49" in c.train_text + c.val_text
    h = load_corpus(DataConfig(source="hub", hub_id=str(folder)))
    assert h.train_text == c.train_text and h.name == f"hub:{folder}"
    t = load_corpus(DataConfig(source="hub", hub_id=str(folder), split="test"))
    assert "document number 7" not in t.train_text + t.val_text
    with pytest.raises(DataError, match="split 'validation'"):
        load_corpus(DataConfig(source="hub", hub_id=str(folder), split="validation"))
    with pytest.raises(DataError, match="hub_config 'nope'"):
        load_corpus(DataConfig(source="hub", hub_id=str(folder), hub_config="nope"))


# ---------------------------------------------------------------- hub
def test_unknown_hub_id_offline():
    with pytest.raises(DataError, match="could not reach the Hugging Face Hub for 'nobody/no-such-set'"):
        load_corpus(DataConfig(source="hub", hub_id="nobody/no-such-set"))


def test_hub_is_streamed_and_stops_at_max_chars(monkeypatch):
    import datasets

    seen = {}

    def fake_load(*args, **kw):
        seen.update(kw, args=args)

        def endless():
            i = 0
            while True:
                yield {"text": f"row {i} " + "x" * 90, "id": i}
                i += 1
        return endless()

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    c = load_corpus(DataConfig(source="hub", hub_id="u/set", hub_config="en", split="train", max_chars=10_000))
    assert seen["streaming"] is True and "trust_remote_code" not in seen
    assert seen["args"] == ("u/set", "en") and seen["split"] == "train"
    assert 9_000 < len(c.train_text) + len(c.val_text) < 10_500


@pytest.mark.parametrize("exc, match", [
    (type("ConnectError", (Exception,), {})("boom"), "could not reach the Hugging Face Hub for 'u/set'"),
    (type("DatasetNotFoundError", (FileNotFoundError,), {})("gone"), "dataset 'u/set' was not found"),
    (ValueError("Bad split: dev. Available splits: ['train']"), "split 'train' is not available"),
])
def test_hub_errors_are_translated(monkeypatch, exc, match):
    import datasets

    def fail(*a, **k):
        raise exc
    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError, match=match):
        load_corpus(DataConfig(source="hub", hub_id="u/set"))


# ---------------------------------------------------------------- bad files
def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found: .*nope.txt"):
        files(tmp_path / "nope.txt")


def test_unsupported_extension(tmp_path):
    p = tmp_path / "doc.pdf"
    p.write_bytes(b"%PDF-1.4")
    with pytest.raises(DataError, match=r"doc.pdf: unsupported file type '.pdf'"):
        files(p)


@pytest.mark.parametrize("name, content", [("empty.txt", b""), ("blank.md", b"  \n\n \t\n"),
                                           ("empty.jsonl", b'{"text": ""}\n{"text": null}\n')])
def test_empty_files(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=f"{name} contains no text"):
        files(p)


@pytest.mark.parametrize("content, match", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 100, "binary file"),
    (bytes(range(1, 32)) * 100, "mostly non-text"),
    ("h\u00e9llo".encode("utf-16"), "UTF-16"),
])
def test_binary_files(tmp_path, content, match):
    p = tmp_path / "weird.txt"
    p.write_bytes(content)
    with pytest.raises(DataError, match=f"weird.txt .*{match}|{match}"):
        files(p)


def test_non_utf8_file_names_the_file(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1") * 20)
    with pytest.raises(DataError, match=r"latin.txt is not valid UTF-8 .*0xe9.*re-save it as UTF-8"):
        files(p)


@pytest.mark.parametrize("name", ["latin.csv", "latin.jsonl"])
def test_non_utf8_structured_file(tmp_path, name):
    p = tmp_path / name
    p.write_bytes('text\n"caf\u00e9"\n'.encode("latin-1") if name.endswith("csv") else
                  '{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=f"{name} is not valid UTF-8.*re-save it as UTF-8"):
        files(p)


def test_empty_csv(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_bytes(b"")
    with pytest.raises(DataError, match="empty.csv contains no text"):
        files(p)


def test_broken_json_names_the_file(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(DataError, match="broken.jsonl"):
        files(p)


def test_binary_rows_are_rejected(tmp_path):
    p = write_jsonl(tmp_path / "nul.jsonl", [{"text": "abc\u0000def"}] * 20)
    with pytest.raises(DataError, match="binary"):
        files(p)


# ---------------------------------------------------------------- length check
def test_check_length():
    c = Corpus("a" * 100, "b" * 10, "files:tiny.txt")
    check_length(c, 65, 65, 64)
    with pytest.raises(DataError, match=r"validation split of files:tiny.txt has 10 tokens.*max_seq_len 64 .*65"):
        check_length(c, 100, 10, 64)
    with pytest.raises(DataError, match="data shorter than the context: the training split"):
        check_length(c, 64, 100, 64)
