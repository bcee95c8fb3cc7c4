"""Named presets: specs kept as data in presets/*.json (one file per architecture family)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .spec import ModelSpec

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description, in a stable order (smallest first)."""
    out = {}
    for path in sorted(PRESETS_DIR.glob("*.json"), key=lambda p: (p.stem != "tiny-char", p.stem)):
        out[path.stem] = json.loads(path.read_text(encoding="utf-8")).get("description", "")
    return out


def load_preset(name: str) -> ModelSpec:
    """The spec of a preset by name (e.g. "llama"); ValueError naming the choices otherwise."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name) or \
            not (PRESETS_DIR / f"{name}.json").is_file():
        raise ValueError(f"preset {name!r} does not exist; choose one of: {', '.join(list_presets())}")
    return ModelSpec.from_json((PRESETS_DIR / f"{name}.json").read_text(encoding="utf-8"))
