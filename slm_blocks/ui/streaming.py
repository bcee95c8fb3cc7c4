"""Streaming text to the page at engine speed. The engine makes a token in about a millisecond, but every
update a Gradio generator yields is one message the browser must receive and render: one update per token made
200 tokens take 11-22 s to appear. Chunking sends the newest text at most every `interval_s` (the eye sees a
smooth stream at ~12 updates/s) and always the final text.

Decoding one token of a small model is a chain of tiny matmuls: on busy cores (a training worker next door, other
users) torch's spinning OpenMP threads made it 10x slower than one thread (measured here: 200 tokens in 7-9 s on
2 threads, 0.7-1.6 s on one, while another training ran). `one_thread` runs each step on one thread; torch's
thread count is per calling thread, so other requests keep theirs."""

from __future__ import annotations

import time
from typing import Iterable, Iterator

import torch

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


def one_thread(items: Iterable) -> Iterator:
    """`items`, each one computed with torch on one thread (this thread's setting, restored after each step:
    Gradio runs every step of a streaming handler on a pool thread, maybe a different one each time)."""
    it = iter(items)
    while True:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            torch.set_num_threads(before)
        yield item
