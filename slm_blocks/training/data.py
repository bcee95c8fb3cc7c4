"""Text data for training: built-in sets, local files and Hub datasets behind one call.

Everything ends up as two plain strings (train / val) split on document boundaries, so no
window of validation text is ever seen in training. Problems a user can fix are raised as
DataError with the field to change, because they reach the UI verbatim.
"""
from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .schema import Problem, SettingsError, parse_record, setting, short


class DataError(ValueError):
    """A problem with the user's data or data settings; the message says what to change."""


_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"{_PART}/{_PART}")


def is_hub_id(text) -> bool:
    """`owner/name` and nothing else: no local path (absolute, relative, '~', '..', '.', a trailing newline or
    backslash) can pass, and a name that is also a folder in the server's working directory is refused too
    (the Hub libraries read a local folder first, and the app's own process resolves names for the preview)."""
    import os

    return (isinstance(text, str) and bool(HUB_ID.fullmatch(text)) and ".." not in text
            and not os.path.lexists(text))


@dataclass
class DataConfig:
    source: Literal["builtin", "files", "hub"] = setting(
        "builtin", advanced=False, label="Data", help="builtin: a data set that ships with the app; files: your "
        "text files; hub: a Hugging Face Hub dataset")
    name: str = setting("stories", advanced=False, label="Built-in dataset", help="see builtin_datasets()")
    paths: list[str] = setting(factory=list, label="Files", help="text, jsonl, json, csv, parquet files or a "
                               "local dataset folder")
    hub_id: str | None = setting(None, advanced=False, label="Hub dataset id", help="'owner/name' on the Hub",
                                 empty="none")
    hub_config: str | None = setting(None, label="Hub config", help="the dataset's configuration, if it has several",
                                     empty="the default")
    split: str = setting("train", label="Split", help="which split of the dataset to read")
    text_column: str | None = setting(None, label="Text column", help="the column that holds the text",
                                      empty="'text', else the only text column")
    max_chars: int = setting(20_000_000, lo=1, hi=10**10, label="Max characters",
                             help="cap on loaded text; Hub sets are streamed up to it")
    val_fraction: float = setting(0.1, lo=0, hi=1, lo_open=True, hi_open=True, label="Validation share",
                                  help="share of the documents held out for validation")
    seed: int = setting(0, lo=0, hi=2**31 - 1, label="Data seed", help="seed of the split (and of built-in data)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataConfig":
        problems: list[Problem] = []
        cfg = parse_record(cls, d, "", problems)
        problems += cfg.problems()
        if problems:
            raise DataSettingsError(problems, "data settings")
        return cfg

    def problems(self, path: str = "", app: bool = False) -> list[Problem]:
        """Cross-field checks. In the app (`app=True`) data comes only from the upload widget, built-in sets
        or the Hub: a local path or a path-like Hub id could read other users' files on the server."""
        at = (lambda name: f"{path}.{name}" if path else name)  # noqa: E731
        out = []
        if self.source == "builtin" and self.name not in _BUILTINS:
            out.append(Problem(at("name"), f"built-in dataset {short(self.name)} is unknown; choose one of: "
                               f"{', '.join(_BUILTINS)}"))
        if self.source == "hub":
            if not (self.hub_id or "").strip():
                out.append(Problem(at("hub_id"), "is empty: source 'hub' needs a dataset id such as 'owner/name'"))
            elif app and not is_hub_id(self.hub_id):
                out.append(Problem(at("hub_id"), f"{short(self.hub_id)} is not a Hub id; use 'owner/name' (local "
                                   "files: upload them instead)"))
        if self.source == "files" and not self.paths and not app:
            out.append(Problem(at("paths"), "is empty: source 'files' needs at least one file; add a path"))
        if app and self.paths:
            out.append(Problem(at("paths"), "local paths are not accepted by the app; upload the files with the "
                               "upload widget (or send them as the files of the /train call)"))
        return out


class DataSettingsError(SettingsError, DataError):
    """Bad data settings: a SettingsError (every problem, by field) that data code also catches as DataError."""


@dataclass
class Corpus:
    train_text: str
    val_text: str
    name: str  # short description, e.g. "builtin:stories", "files:data.csv"
    eval_examples: list[tuple[str, str]] = field(default_factory=list)  # (prompt, answer)
    info: dict = field(default_factory=dict)  # how it was split, document counts

    def describe(self) -> dict:
        return {
            "name": self.name,
            "train_chars": len(self.train_text),
            "val_chars": len(self.val_text),
            "train_lines": len(self.train_text.splitlines()),
            "val_lines": len(self.val_text.splitlines()),
            "distinct_chars": len(set(self.train_text) | set(self.val_text)),
            "eval_examples": len(self.eval_examples),
            **self.info,
        }


_BUILTINS = {
    "stories": "Generated short English stories (~1.5 MB): names, places, dialogue, punctuation.",
    "addition": "Lines like '482+17=499' with 1-3 digit numbers; scored by exact-match accuracy.",
}


def builtin_datasets() -> dict[str, str]:
    return dict(_BUILTINS)


# ---------------------------------------------------------------- built-in: stories
# A tiny story grammar. Recurring names, quotes and sentence shapes give a small model
# structure to learn within minutes on a CPU, without shipping anyone else's text.
_PEOPLE = [(n, "she" if i % 2 else "he") for i, n in enumerate(
    "Tobin Mira Felix Ada Oscar Nell Jonah Ivy Arlo Lena Milo Ruth Hugo Tess Otis Wren".split())]
_PLACES = ("the harbor|the old mill|the pine forest|the market|the lighthouse|the bakery|the river bank|the library|"
           "the hill above town|the garden|the train station|the quiet lake|the school yard|the bridge").split("|")
_ADJS = "brass red tiny old silver broken wooden blue strange golden heavy green".split()
_THINGS = "key kite map lantern letter boat clock drum hat basket shell compass book ring whistle umbrella".split()
_ANIMALS = ("a gray cat|a small fox|an old dog|a clever crow|a sleepy owl|a brown goat|a white duck").split("|")
_TIMES = ("One morning|Late one evening|On the first day of spring|After the storm|Just before noon|"
          "On a cold winter night|Long ago|One rainy afternoon").split("|")
_WEATHER = ("The sky was gray and low.|The sun was warm on the roofs.|Rain tapped on the windows.|A cold wind "
            "came down from the hills.|Snow covered the streets.|The air smelled of bread and salt.").split("|")
_FEELINGS = "happy worried curious tired brave nervous proud sad excited".split()
_HIDING = ("under a flat stone|inside an old boot|in the tall grass|behind a stack of crates|at the bottom of a barrel|"
           "on a high shelf|beneath the stairs|in a nest of twigs").split("|")
_NUMBERS = "two three four five seven ten twelve twenty".split()
_THANKS = ["I could not have done it alone.", "You are a true friend.", "Let us never lose it again."]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _story(r: random.Random) -> str:
    (a, pa), (b, _) = r.sample(_PEOPLE, 2)
    adj, thing, place, place2 = r.choice(_ADJS), r.choice(_THINGS), r.choice(_PLACES), r.choice(_PLACES)
    poss = "her" if pa == "she" else "his"
    Pa, animal, feel = pa.capitalize(), r.choice(_ANIMALS), r.choice(["worried", "sad", "nervous", "upset"])
    open_ = [f"{r.choice(_TIMES)}, {a} walked to {place}.", r.choice(_WEATHER),
             r.choice([f"{a} was {feel}, because {pa} had lost {poss} {adj} {thing}.",
                       f"{a} felt {feel}. {Pa} could not find {poss} {adj} {thing} anywhere.",
                       f"{Pa} was looking for {_a(adj)} {thing} that {poss} grandmother had made."])]
    talk = [f"\"Hello, {b},\" said {a}. \"Have you seen my {adj} {thing}?\"",
            r.choice([f"\"No,\" said {b}. \"But I saw {animal} near {place2}.\"",
                      f"{b} thought for a moment. \"Maybe it is at {place2},\" {b} said.",
                      f"\"I saw {animal} carrying something {adj} to {place2}!\" said {b}."]),
            r.choice([f"\"Will you come with me?\" asked {a}.", f"\"Then let us go,\" said {a}.",
                      f"\"Oh no!\" cried {a}. \"We must hurry.\""])]
    if r.random() < 0.5:
        talk.append(f"\"Of course,\" said {b}, and the two friends set off together.")
    trip = r.sample([f"They walked past {r.choice(_PLACES)}.", "They crossed the bridge and climbed the hill.",
                     f"{b} counted {r.choice(_NUMBERS)} boats in the water.", f"On the way, {animal} followed them.",
                     f"The road to {place2} was long, and {a} grew {r.choice(_FEELINGS)}.",
                     f"They stopped to share {_a(r.choice(['apple', 'pear', 'sandwich', 'cake']))}."], r.randint(2, 4))
    end = [f"At last they found the {adj} {thing} {r.choice(_HIDING)}.",
           f"\"Thank you, {b},\" said {a}. \"{r.choice(_THANKS)}\"",
           r.choice([f"From that day on, {a} and {b} met at {place} every week.",
                     f"That night, {a} slept with the {thing} close by.",
                     f"And {a} was {r.choice(['happy', 'glad', 'calm'])} again."])]
    title = f"The {adj.capitalize()} {thing.capitalize()}"
    return "\n\n".join([title] + [" ".join(p) for p in (open_, talk, trip, end)])


def _stories(seed: int, max_chars: int, target: int = 1_500_000) -> list[str]:
    r, docs, n = random.Random(seed), [], 0
    while n < min(target, max_chars):
        docs.append(_story(r))
        n += len(docs[-1]) + 2
    return docs


# ---------------------------------------------------------------- built-in: addition
def _addition(cfg: DataConfig, n_total: int = 100_000) -> Corpus:
    """Val pairs are drawn first; train excludes them and their swapped order (a+b vs b+a)."""
    r = random.Random(cfg.seed)
    n_total = max(10, min(n_total, cfg.max_chars // 12))
    n_val = max(1, round(n_total * cfg.val_fraction))
    pairs, seen = [], set()
    while len(pairs) < n_total:  # digits drawn uniformly so short sums are not rare
        a, b = (r.randrange(10 ** (d - 1) if d > 1 else 0, 10 ** d) for d in (r.randint(1, 3), r.randint(1, 3)))
        if (a, b) not in seen:
            seen.add((a, b))
            pairs.append((a, b))
    val = pairs[:n_val]
    val_keys = {(min(p), max(p)) for p in val}
    train = [p for p in pairs[n_val:] if (min(p), max(p)) not in val_keys]
    line = lambda p: f"{p[0]}+{p[1]}={p[0] + p[1]}\n"  # noqa: E731
    evals = [(f"{a}+{b}=", str(a + b)) for a, b in val[:200]]
    return Corpus("".join(map(line, train)), "".join(map(line, val)), "builtin:addition", evals,
                  {"train_docs": len(train), "val_docs": len(val), "split": "disjoint problems"})


# ---------------------------------------------------------------- local files
_TEXT_EXT = {".txt", ".md"}
_ROW_EXT = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _check_text(text: str, label: str) -> None:
    """Reject binary content early: it trains without error and teaches garbage, which is worse."""
    if "\x00" in text:
        raise DataError(f"{label} looks like a binary file (it contains NUL bytes), not text; "
                        f"upload a UTF-8 .txt, .md, .csv, .jsonl, .json or .parquet file.")
    sample = text[:200_000]
    bad = sum(1 for c in sample if unicodedata.category(c)[0] == "C" and c not in "\n\r\t\f\v")
    if sample and bad / len(sample) > 0.05:
        raise DataError(f"{label} is mostly non-text ({bad} control characters in the first {len(sample)}); "
                        f"upload a plain UTF-8 text file.")


def _read_text_file(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(f"{path.name} is saved as UTF-16; re-save it as UTF-8 and upload it again.")
    if b"\x00" in raw:
        _check_text("\x00", path.name)  # raises the binary-file error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path.name} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        f"re-save it as UTF-8 (e.g. 'Save as... UTF-8' in your editor) and upload it again.") from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    _check_text(text, path.name)
    return text


def _error_names(e: BaseException | None) -> str:
    """Class names along the exception chain: datasets often wraps the error that matters."""
    names: list[str] = []
    for _ in range(20):  # bounded: a chain is short, and this must never loop
        if e is None:
            break
        names += [t.__name__ for t in type(e).__mro__]
        e = e.__cause__ or e.__context__
    return " ".join(names)


def _translate(e: Exception, cfg: DataConfig, what: str, hub: bool) -> DataError:
    """Map datasets/hub exceptions to a message that names the setting to change."""
    msg, names = " ".join(str(e).split())[:300], _error_names(e)
    if hub and any(k in names for k in ("ConnectionError", "ConnectError", "Timeout", "OfflineModeIsEnabled")):
        return DataError(f"could not reach the Hugging Face Hub for '{what}'; check the id and your "
                         f"connection, or upload the file instead.")
    if "UnicodeDecodeError" in names:
        return DataError(f"{what} is not valid UTF-8 ({msg}); re-save it as UTF-8 and upload it again.")
    if "EmptyDataError" in names:
        return DataError(f"{what} contains no text; check the file or pick another one.")
    if type(e).__name__ in ("DatasetNotFoundError", "DataFilesNotFoundError", "FileNotFoundError"):
        return DataError(f"dataset '{what}' was not found ({msg}); check hub_id (private or gated sets "
                         f"need a login), or upload the file instead.")
    if isinstance(e, ValueError) and ("Bad split" in msg or "Unknown split" in msg):
        return DataError(f"split '{cfg.split}' is not available in '{what}' ({msg}); set split to one of them.")
    if isinstance(e, ValueError) and ("BuilderConfig" in msg or "Config name" in msg):
        return DataError(f"hub_config '{cfg.hub_config}' does not fit '{what}' ({msg}); set hub_config to one of them.")
    return DataError(f"could not read '{what}' ({type(e).__name__}: {msg}); check that it is valid, "
                     f"not corrupted, and saved as UTF-8.")


def _rows(cfg: DataConfig, what: str, budget: int, hub: bool, *args: Any, **kw: Any) -> list[str]:
    """Stream rows of a `datasets` source and keep one text column, stopping at `budget` chars."""
    import datasets  # slow import; only paid when rows are needed

    from .hub_access import read_token

    out: list[str] = []
    try:
        ds = datasets.load_dataset(*args, streaming=True, token=read_token(), **kw)
        col, n = None, 0
        for row in ds:
            if col is None:
                col = _pick_column(row, getattr(ds, "features", None), cfg.text_column, what)
            v = row[col]
            if v is None or v == "":
                continue
            if not isinstance(v, str):
                raise DataError(f"text_column '{col}' in {what} holds {type(v).__name__} values, not text; "
                                f"set text_column to a text column (columns: {', '.join(row)}).")
            out.append(v)
            n += len(v) + 2
            if n >= budget:
                break
    except DataError:
        raise
    except Exception as e:  # datasets raises many types; all become one actionable message
        raise _translate(e, cfg, what, hub) from e
    return out


def _pick_column(row: dict, features: Any, wanted: str | None, what: str) -> str:
    cols = list(row)
    if wanted is not None:
        if wanted not in row:
            raise DataError(f"text_column '{wanted}' not found in {what}; available columns: {', '.join(cols)}. "
                            f"Set text_column to one of them.")
        return wanted
    if "text" in row:
        return "text"
    if features is not None:
        strs = [c for c in cols if getattr(features.get(c), "dtype", "") in ("string", "large_string")]
    else:
        strs = [c for c in cols if isinstance(row[c], str)]
    if len(strs) == 1:
        return strs[0]
    raise DataError(f"could not tell which column of {what} holds the text (no 'text' column, {len(strs)} text "
                    f"columns); available columns: {', '.join(cols)}. Set text_column to one of them.")


def _load_files(cfg: DataConfig) -> tuple[list[str], str]:
    if not cfg.paths:
        raise DataError("paths is empty: source 'files' needs at least one file; upload a file or add a path.")
    docs: list[str] = []
    budget = cfg.max_chars
    for p in cfg.paths:
        path = Path(p)
        if not path.exists():
            raise DataError(f"file not found: {p}. Check the path in paths or upload the file again.")
        ext = path.suffix.lower()
        if path.is_dir():
            got = _rows(cfg, path.name, budget, False, str(path), split=cfg.split)
        elif ext in _TEXT_EXT:
            got = [_read_text_file(path)[:budget]]
        elif ext in _ROW_EXT:
            got = _rows(cfg, path.name, budget, False, _ROW_EXT[ext], data_files=str(path), split="train")
        else:
            raise DataError(f"{path.name}: unsupported file type '{ext or '(none)'}'; use .txt, .md, .jsonl, "
                            f".json, .csv, .parquet or a dataset folder.")
        if not any(t.strip() for t in got):
            raise DataError(f"{path.name} contains no text; check the file (and text_column) or pick another one.")
        docs += got
        budget -= sum(len(t) + 2 for t in got)
        if budget <= 0:
            break
    names = [Path(p).name for p in cfg.paths]
    return docs, "files:" + (names[0] if len(names) == 1 else f"{names[0]}+{len(names) - 1} more")


def _load_hub(cfg: DataConfig) -> tuple[list[str], str]:
    if not cfg.hub_id:
        raise DataError("hub_id is empty: source 'hub' needs a dataset id such as 'user/name'.")
    return _rows(cfg, cfg.hub_id, cfg.max_chars, True, cfg.hub_id, cfg.hub_config, split=cfg.split), f"hub:{cfg.hub_id}"


# ---------------------------------------------------------------- split + entry point
def _tail_cut(text: str, val_fraction: float) -> int | None:
    """Index where val starts: the newline nearest the requested fraction (else a space).
    None when there is no such boundary: cutting inside a word would split one document."""
    cut = int(len(text) * (1 - val_fraction))
    for sep in ("\n", " "):
        before, after = text.rfind(sep, 1, cut + 1), text.find(sep, cut)
        options = [i + 1 for i in (before, after) if 0 < i < len(text) - 1]
        if options:
            return min(options, key=lambda i: abs(i - cut))
    return None


def split_docs(docs: list[str], val_fraction: float, seed: int) -> tuple[str, str, dict]:
    """Whole documents go to val (seeded) when every one is small against the val share;
    otherwise (one long text, a few big files) the tail of the joined text does."""
    total = sum(map(len, docs))
    target = val_fraction * total
    if len(docs) > 1 and max(map(len, docs)) <= target:
        val_ids, n = set(), 0
        for i in random.Random(seed).sample(range(len(docs)), len(docs)):
            if n >= target:
                break
            val_ids.add(i)
            n += len(docs[i])
        train = [d for i, d in enumerate(docs) if i not in val_ids]
        val = [d for i, d in enumerate(docs) if i in val_ids]
        info = {"train_docs": len(train), "val_docs": len(val), "split": "documents"}
        return "\n\n".join(train), "\n\n".join(val), info
    text = "\n\n".join(docs)
    cut = _tail_cut(text, val_fraction) or len(text)  # no boundary: val stays empty, caller reports it
    return text[:cut], text[cut:], {"docs": len(docs), "split": "tail"}


def _validate(cfg: DataConfig) -> None:
    problems: list[Problem] = []
    parse_record(DataConfig, cfg.to_dict(), "", problems)  # a config built in code gets the same checks
    problems += cfg.problems()
    if problems:
        raise DataError("; ".join(str(p) for p in problems))


def load_corpus(cfg: DataConfig) -> Corpus:
    _validate(cfg)
    if cfg.source == "builtin" and cfg.name == "addition":
        return _addition(cfg)
    if cfg.source == "builtin":
        docs, name = _stories(cfg.seed, cfg.max_chars), "builtin:stories"
    elif cfg.source == "files":
        docs, name = _load_files(cfg)
    else:
        docs, name = _load_hub(cfg)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"{name} contains no text; check the data (and text_column) or pick another source.")
    _check_text("\n".join(docs), name)
    train, val, info = split_docs(docs, cfg.val_fraction, cfg.seed)
    if not val.strip() or not train.strip():
        raise DataError(f"the {'validation' if not val.strip() else 'training'} split of {name} is empty "
                        f"({sum(map(len, docs))} chars in all); add more text or lines, or change val_fraction.")
    return Corpus(train, val, name, [], info)


def check_length(corpus: Corpus, n_tokens_train: int, n_tokens_val: int, context: int) -> None:
    """Training samples windows of context+1 tokens; fewer tokens than that cannot make one."""
    for split, n in (("training", n_tokens_train), ("validation", n_tokens_val)):
        if n < context + 1:
            raise DataError(f"data shorter than the context: the {split} split of {corpus.name} has {n} tokens, "
                            f"but max_seq_len {context} needs at least {context + 1}. Lower max_seq_len or add data.")
