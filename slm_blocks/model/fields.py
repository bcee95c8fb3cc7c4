"""Typed records from untrusted data: one way to declare a field, one parser, one Problem.

The model spec and its blocks (spec.py, blocks/) and the training settings (training/config.py, data.py,
tokenization.py, job.py) are dataclasses whose fields are declared with `setting(...)`. Its metadata is the
one source for everything that shows or checks a field: the parser below (JSON from a file or the network,
form values, CLI strings), the app's widgets (label, help, what an empty value means, whether it sits under
Advanced), the CLI's flags and every message that names a field. The parser collects every problem instead
of stopping at the first, each with the dotted path of its field (`train.lr`, `blocks[2].attention.n_heads`)
and the fix, so a learner fixes a spec or a form in one go.

It lives in model/, the bottom layer, because the spec needs it; training/schema.py adds what only settings
need (flattening for logs, with secrets redacted).
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Literal, Union

MAX_TEXT = 2000  # a text field holds a name or a short line, never a document


def setting(default=MISSING, *, lo=None, hi=None, lo_open=False, hi_open=False, help="", label="", empty="",
            advanced=True, applies=None, parse=None, factory=MISSING):
    """A field with bounds (inclusive unless *_open), a one-line help, the label a form shows, for an optional
    field what leaving it empty means (`empty`, e.g. "4 × d_model"), whether a form puts it under Advanced,
    `applies(record)`: whether the field matters given the record's other choices (a RoPE base with learned
    positions does not), and `parse(value, path, problems) -> (ok, value)` for a value no type hint describes
    (the spec's block list)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "help": help, "label": label,
            "empty": empty, "advanced": advanced, "applies": applies, "parse": parse}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a field: where (its dotted path, "" = the whole record) and what to do about it.

    In a model spec a block's fields sit under `blocks[i]`: `block` and `field` split such a path into the
    block index and the field inside the block (the Build tab shows a problem next to its block)."""

    path: str
    message: str

    @property
    def block(self) -> int | None:
        m = _BLOCK.match(self.path)
        return int(m.group(1)) if m else None

    @property
    def field(self) -> str:
        m = _BLOCK.match(self.path)
        return self.path[m.end():].lstrip(".") if m else self.path

    def within(self, prefix: str) -> "Problem":
        """The same problem seen from a record that holds this one under `prefix` (a job holds its spec)."""
        return Problem(join(prefix, self.path), self.message)

    def __str__(self) -> str:
        if self.block is not None:
            where = f"block {self.block}" + (f" · {self.field}" if self.field else "")
            return f"{where}: {self.message}"
        return f"{self.path}: {self.message}" if self.path else self.message


_BLOCK = re.compile(r"blocks\[(\d+)\](?=\.|$)")


class SettingsError(ValueError):
    """Fields that cannot work; `.problems` lists every reason."""

    def __init__(self, problems: list[Problem], what: str = "settings"):
        self.problems = list(problems)
        super().__init__(f"invalid {what}:\n" + "\n".join(f"- {self.line(p)}" for p in self.problems))

    @staticmethod
    def line(p: Problem) -> str:
        return str(p)


# ----------------------------------------------------------------------------- values


def short(value) -> str:
    """A value as short text for messages and logs (never the whole of a huge or deep value)."""
    if isinstance(value, (dict, list, tuple)) or value is None:
        return kind(value)
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int) and abs(value) >= 10**18:
        return "a huge number"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = json.dumps(value) if isinstance(value, (int, float, str)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def kind(value) -> str:
    """What a JSON value is, in words."""
    return {dict: "an object", list: "a list", tuple: "a list", str: "a string", bool: "a boolean",
            type(None): "nothing (empty)"}.get(type(value), "a number")


def number_text(x) -> str:
    """A bound as a learner reads it: 1048576, 0.1, 1e-12, 1.0 (a float bound stays a float)."""
    return str(x)


def parse_number(value, kind: type = float, optional: bool = False, text: bool = True):
    """A number from JSON, a form widget or (with `text`) a command line: (ok, number or None, problem).

    Accepts ints, floats and, with `text`, numeric text ("1e-3", " 12 "); empty (None, or blank text) is None
    when `optional`. Refuses booleans, lists, NaN and infinities (JSON's 1e400 reads as inf), and a fraction
    where a whole number is needed. The one number parser of specs, settings and forms."""
    wanted = "a whole number" if kind is int else "a number"
    if value is None or (text and isinstance(value, str) and not value.strip()):
        return (True, None, "") if optional else (False, None, f"is empty; it must be {wanted}")
    if isinstance(value, str) and text:
        try:
            value = int(value) if re.fullmatch(r"\s*[+-]?\d+\s*", value) else float(value.strip())
        except ValueError:
            return False, None, f"must be {wanted}, got {short(value)}"
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        return False, None, f"must be {wanted}, got {short(value)}"
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


def _bounds_problem(value, meta) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        return f"is {short(value)}; it must be {'greater than' if meta.get('lo_open') else 'at least'} " \
               f"{number_text(lo)}"
    if hi is not None and (value >= hi if meta.get("hi_open") else value > hi):
        return f"is {short(value)}; it must be {'less than' if meta.get('hi_open') else 'at most'} {number_text(hi)}"
    return ""


def unwrap_optional(hint) -> tuple[typing.Any, bool]:
    """(T, True) for `T | None`, (hint, False) otherwise."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def parse_value(hint, value, path: str, meta, problems: list[Problem], text: bool = True):
    """Check one value against its type hint and bounds; returns (ok, value) and adds a Problem if not ok.
    `text`: numbers may come as text (forms, command lines); a spec's JSON must hold real numbers."""
    meta = meta or {}
    hint, optional = unwrap_optional(hint)
    help_ = f" ({meta['help']})" if meta.get("help") else ""

    def bad(msg: str):
        problems.append(Problem(path, msg))
        return False, None

    if value is None and optional:
        return True, None
    if is_dataclass(hint):
        return True, parse_record(hint, value, path, problems, text)
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, str) and value in choices:
            return True, value
        head = "is empty" if value is None else f"{short(value)} is not allowed"
        return bad(f"{head}; use one of: {', '.join(map(str, choices))}")
    if hint is bool:
        if isinstance(value, bool):
            return True, value
        return bad(("is empty; it must be true or false" if value is None else
                    f"must be true or false, got {short(value)}") + help_)
    if hint in (int, float):
        ok, number, why = parse_number(value, hint, optional, text)
        if not ok:
            return bad(why + help_)
        if number is None:
            return True, None
        why = _bounds_problem(number, meta)
        return bad(why + help_) if why else (True, number)
    if hint is str:
        if isinstance(value, str) and len(value) <= MAX_TEXT:
            return True, value
        return bad("is empty; it must be a short text" if value is None else
                   f"must be a short text (at most {MAX_TEXT} characters)" if isinstance(value, str) else
                   f"must be a short text, got {short(value)}")
    if typing.get_origin(hint) is list and typing.get_args(hint) == (str,):
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) and len(v) <= 4096 for v in value) \
                and len(value) <= 1000:
            return True, list(value)
        return bad(f"must be a list of texts, got {short(value)}")
    raise TypeError(f"field type {hint!r} has no parser")  # a bug in a record's declaration, not user input


def parse_record(cls, data, path: str, problems: list[Problem], text: bool = True):
    """Build dataclass `cls` from untrusted data, adding a Problem per bad or unknown field (bad fields keep
    their defaults, so later checks still run). A block's `type` is its identity, read by whoever chose `cls`.
    Checks across fields are the record's own (`problems()`, model/validate.py)."""
    if not isinstance(data, dict):
        problems.append(Problem(path, f"must be a JSON object, got {kind(data)}"))
        return cls()
    hints = typing.get_type_hints(cls)
    declared = fields(cls)
    names = {f.name for f in declared}
    for key in data:
        if key not in names:
            allowed = ", ".join(f.name for f in declared if f.name != "type")
            problems.append(Problem(join(path, str(key)[:40]),  # a key is never echoed whole
                                    f"is not a field of {what(cls)}; remove it (allowed: {allowed})"))
    values = {}
    for f in declared:
        if f.name not in data or f.name == "type":
            continue
        fpath = join(path, f.name)
        custom = f.metadata.get("parse")
        ok, value = custom(data[f.name], fpath, problems) if custom else \
            parse_value(hints[f.name], data[f.name], fpath, f.metadata, problems, text)
        if ok:
            values[f.name] = value
    return cls(**values)


def what(cls) -> str:
    """How messages name a record: its WHAT, "an attention block" for a block type, else "these settings"."""
    if getattr(cls, "WHAT", None):
        return cls.WHAT
    btype = next((f.default for f in fields(cls) if f.name == "type"), None)
    if isinstance(btype, str):
        return f"{'an' if btype[0] in 'aeiou' else 'a'} {btype} block"
    return "these settings"


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else path or key


# ----------------------------------------------------------------------------- reading declarations


def field_meta(cls, name: str) -> dict:
    return dict(next(f.metadata for f in fields(cls) if f.name == name))


def label(cls, name: str) -> str:
    """The label a learner sees for a field of a record (its `label` metadata, else the name in words)."""
    return field_meta(cls, name).get("label") or name.replace("_", " ").capitalize()


def leaf_fields(cls, prefix: str = "") -> list[tuple[str, typing.Any, dict]]:
    """(dotted path, type hint, metadata) of every editable field of a record, nested records flattened in
    declaration order (a block's `type` is not editable)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name == "type" or f.metadata.get("parse"):
            continue
        inner, _ = unwrap_optional(hints[f.name])
        if is_dataclass(inner):
            out += leaf_fields(inner, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, hints[f.name], dict(f.metadata)))
    return out


def applicable(record, prefix: str = "") -> dict[str, typing.Any]:
    """The fields of a record that change what it computes, flattened ("attention.n_heads": 4): empty optional
    fields are left out, and so are fields whose `applies` says the record's other choices make them moot."""
    out = {}
    for f in fields(record):
        value = getattr(record, f.name)
        applies = f.metadata.get("applies")
        if f.name == "type" or value is None or (applies is not None and not applies(record)):
            continue
        if is_dataclass(value):
            out.update(applicable(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out
