"""The model card as the Share tab previews it: the Hub metadata (the README's YAML front matter, which Markdown
would show as a run-on paragraph) becomes a table, and the loss curve, a file next to the README, is inlined so
the page can show it."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import yaml


def _value(v) -> str:
    text = ", ".join(map(str, v)) if isinstance(v, list) else str(v)
    return html.escape(text).replace("|", "&#124;")


def card_preview(folder: Path) -> str:
    """Markdown for the card in `folder` (README.md + loss.png)."""
    text = (Path(folder) / "README.md").read_text()
    meta, body = {}, text
    if text.startswith("---\n"):
        head, sep, rest = text[4:].partition("\n---\n")
        if sep:
            try:
                meta = yaml.safe_load(head) or {}
            except yaml.YAMLError:
                meta = {}
            body = rest
    table = ""
    if isinstance(meta, dict) and meta:
        rows = [f"| {html.escape(str(k))} | {_value(v)} |" for k, v in meta.items() if v not in (None, "", [])]
        table = "**Hub metadata**\n\n| field | value |\n|---|---|\n" + "\n".join(rows) + "\n\n"
    png = Path(folder) / "loss.png"
    if png.is_file() and "(loss.png)" in body:
        uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
        body = body.replace("(loss.png)", f"({uri})")
    return table + body.lstrip()
