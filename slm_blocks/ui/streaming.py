"""Streaming text to the page at engine speed. The engine makes a token in about a millisecond, but every
update a Gradio generator yields is one message the browser must receive and render: one update per token made
200 tokens take 11-22 s to appear. Chunking sends the newest text at most every `interval_s` (the eye sees a
smooth stream at ~12 updates/s) and always the final text."""

from __future__ import annotations

import time
from typing import Iterable, Iterator

UPDATE_INTERVAL_S = 0.08


def chunked(texts: Iterable[str], interval_s: float | None = None) -> Iterator[str]:
    """The growing texts of `texts`, at most one every `interval_s` (default UPDATE_INTERVAL_S, read at call
    time; 0 = every text), the first at once and the last always."""
    interval_s = UPDATE_INTERVAL_S if interval_s is None else interval_s
    last, pending = float("-inf"), None
    for text in texts:
        now = time.monotonic()
        if now - last >= interval_s:
            last, pending = now, None
            yield text
        else:
            pending = text
    if pending is not None:
        yield pending
