"""The settings side of the field framework (model/fields.py): settings records (TrainConfig, DataConfig,
TokenizerConfig, the Job) declare their fields with `setting(...)` and are read by `parse_record`, exactly as the
model spec is; this module adds what only settings need: flattening a record for logs and MLflow, with anything
named like a secret redacted.
"""

from __future__ import annotations

import re
from dataclasses import is_dataclass

from ..model.fields import (  # noqa: F401  (the framework, for the settings records and the layers above)
    Problem, SettingsError, field_meta, join, label, parse_number, parse_record, parse_value, setting, short,
)

_SECRET = re.compile(r"(^|[._-])(hf_?token|token|api_?key|password|auth)$|secret|private_?key|access_?key",
                     re.IGNORECASE)


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
