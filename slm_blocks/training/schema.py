"""Settings records (TrainConfig, DataConfig, TokenizerConfig, the Job): one way to declare a field, one parser.

A field is declared with `setting(default, lo=, hi=, help=, label=)`; the metadata drives everything else:
the parser below (untrusted JSON, form values, CLI strings), the CLI's flags and their help, the app's form
widgets and the messages that name a field the way the learner sees it. The parser collects every problem
instead of stopping at the first, each with the dotted path of the field (`train.lr`) and the fix, in the
style of the spec's validator (model/validate.py).
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Literal, Union

_SECRET = re.compile(r"(^|[._-])(hf_?token|token|api_?key|password|auth)$|secret|private_?key|access_?key",
                     re.IGNORECASE)


def setting(default=MISSING, *, lo=None, hi=None, lo_open=False, hi_open=False, help="", label="", advanced=True,
            factory=MISSING, derived=""):
    """A field with bounds (inclusive unless *_open), a one-line help, the label the form shows, whether the
    form puts it under Advanced, and for an optional field what an empty value means (`derived`)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "help": help, "label": label,
            "advanced": advanced, "derived": derived}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a setting: where (dotted path, e.g. `train.lr`) and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SettingsError(ValueError):
    """Settings that cannot work; `.problems` lists every reason."""

    def __init__(self, problems: list[Problem], what: str = "settings"):
        self.problems = list(problems)
        super().__init__(f"invalid {what}:\n" + "\n".join(f"- {p}" for p in self.problems))


# ----------------------------------------------------------------------------- values


def short(value) -> str:
    """A value as short text for messages and logs (never the whole of a huge or deep value)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int) and abs(value) >= 10**18:
        return "a huge number"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = json.dumps(value) if isinstance(value, (int, float, str)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def parse_number(value, kind: type = float, optional: bool = False):
    """A number from JSON, a form widget or a command line: (ok, number or None, problem text).

    Accepts ints, floats and numeric text ("1e-3", " 12 "); empty (None or blank text) is None when
    `optional`. Refuses booleans, other text, lists, NaN and infinities (JSON's 1e400 reads as inf), and a
    fraction where a whole number is needed. This is the one number parser of the settings and forms."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return (True, None, "") if optional else (False, None, "is empty; enter a number")
    if isinstance(value, str):
        try:
            value = float(value.strip()) if not re.fullmatch(r"\s*[+-]?\d+\s*", value) else int(value)
        except ValueError:
            return False, None, f"must be a number, got {short(value)}"
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        return False, None, f"must be a number, got {short(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return False, None, f"must be a finite number, got {short(value)}"
    if kind is int and not isinstance(value, int):
        if not (value.is_integer() and abs(value) < 2**53):
            return False, None, f"must be a whole number, got {short(value)}"
        value = int(value)
    if kind is float:
        try:
            value = float(value)
        except OverflowError:
            return False, None, "must be a finite number, got a huge number"
    return True, value, ""


def _bounds_problem(value, meta: dict) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        return f"is {short(value)}; it must be {'greater than' if meta.get('lo_open') else 'at least'} {lo:g}"
    if hi is not None and (value >= hi if meta.get("hi_open") else value > hi):
        return f"is {short(value)}; it must be {'less than' if meta.get('hi_open') else 'at most'} {hi:g}"
    return ""


def _unwrap_optional(hint):
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def parse_value(hint, value, path: str, meta: dict, problems: list[Problem]):
    """Check one value against its type hint and bounds; returns (ok, value) and adds a Problem if not ok."""
    hint, optional = _unwrap_optional(hint)
    help_ = f" ({meta['help']})" if meta.get("help") else ""

    def bad(msg: str):
        problems.append(Problem(path, msg))
        return False, None

    if value is None and optional:
        return True, None
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, str) and value in choices:
            return True, value
        return bad(f"{short(value)} is not allowed; use one of: {', '.join(map(str, choices))}")
    if is_dataclass(hint):
        return True, parse_record(hint, value, path, problems)
    if hint is bool:
        return (True, value) if isinstance(value, bool) else bad(f"must be true or false, got {short(value)}")
    if hint in (int, float):
        ok, number, why = parse_number(value, hint, optional)
        if not ok:
            return bad(why + (help_ if "empty" in why else ""))
        if number is None:
            return True, None
        why = _bounds_problem(number, meta)
        return bad(why + help_) if why else (True, number)
    if hint is str:
        if isinstance(value, str) and len(value) <= 2000:
            return True, value
        return bad("must be a short text" if isinstance(value, str) else f"must be a text, got {short(value)}")
    if typing.get_origin(hint) is list and typing.get_args(hint) == (str,):
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) and len(v) <= 4096 for v in value) \
                and len(value) <= 1000:
            return True, list(value)
        return bad(f"must be a list of texts, got {short(value)}")
    raise TypeError(f"setting type {hint!r} has no parser")  # a bug in a record's declaration, not user input


def parse_record(cls, data, path: str, problems: list[Problem]):
    """Build dataclass `cls` from untrusted data, adding a Problem per bad or unknown field (bad fields keep
    their defaults, so later checks still run). Cross-field checks are the record's own `problems()`."""
    if not isinstance(data, dict):
        problems.append(Problem(path, f"must be a JSON object, got {short(data)}"))
        return cls()
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    for key in data:
        if key not in known:
            problems.append(Problem(join(path, str(key)[:40]),
                                    f"is not a setting here; remove it (known: {', '.join(known)})"))
    values = {}
    for f in fields(cls):
        if f.name in data:
            ok, value = parse_value(hints[f.name], data[f.name], join(path, f.name), dict(f.metadata), problems)
            if ok:
                values[f.name] = value
    return cls(**values)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def field_meta(cls, name: str) -> dict:
    return dict(next(f.metadata for f in fields(cls) if f.name == name))


def label(cls, name: str) -> str:
    """The label a learner sees for a field of a record (its `label` metadata, else the name in words)."""
    return field_meta(cls, name).get("label") or name.replace("_", " ").capitalize()


# ----------------------------------------------------------------------------- flattening


def flatten(d, prefix: str = "", redact: bool = True, skip_none: bool = False, max_len: int = 500) -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: lists are indexed, dataclasses read as dicts, values cut to max_len,
    anything named like a secret (token, password, api key) replaced by *** when `redact`."""
    out: dict[str, str] = {}
    if is_dataclass(d) and not isinstance(d, type):
        d = d.__dict__
    items = d.items() if isinstance(d, dict) else enumerate(d)
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        if is_dataclass(v) and not isinstance(v, type):
            v = v.__dict__
        if isinstance(v, (dict, list)) and v:
            out.update(flatten(v, key, redact, skip_none, max_len))
        elif v is None and skip_none:
            continue
        else:
            out[key] = "***" if redact and _SECRET.search(key) else str(v)[:max_len]
    return out
