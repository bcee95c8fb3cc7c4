"""Models loaded for generation, held by one app process under one memory budget.

A model a learner generates from (a run's latest checkpoint, an imported folder) stays loaded so the next
request is fast, but the process is shared: without a bound, a visitor who imports the same small zip of
zero weights again and again (each a 28M-parameter model once loaded) takes gigabytes. So every loaded model
of every session lives here, least recently used first out once their weights (quantized variants included)
pass `SLM_MODEL_CACHE_MB`; an evicted model is read again from its folder when it is next asked for.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from typing import Callable


def model_bytes(model) -> int:
    """Bytes held by a model's weights and buffers, and by the weight variants Generate made of it."""
    def own(m) -> int:
        return sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))

    variants = getattr(model, "__dict__", {}).get("_slm_weight_variants", {})
    return own(model) + sum(own(v) for v in variants.values())


class ModelCache:
    """(session id, model name) -> (model, tokenizer), least recently used evicted past `budget_bytes`. Each entry
    remembers the version it was read from (a run's latest checkpoint), so a run that trained on since it was
    loaded is read again."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._entries: OrderedDict[tuple[str, str], tuple] = OrderedDict()
        self._versions: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    def get(self, sid: str, name: str, load: Callable[[], tuple], version=None) -> tuple:
        """The loaded (model, tokenizer), loading it with `load()` when it is not held, or was read from another
        `version`."""
        key = (sid, name)
        with self._lock:
            if key in self._entries and self._versions.get(key) == version:
                self._entries.move_to_end(key)
                return self._entries[key]
        loaded = load()  # outside the lock: reading weights takes a while, other sessions go on
        self.put(sid, name, loaded, version)
        return loaded

    def put(self, sid: str, name: str, loaded: tuple, version=None) -> None:
        with self._lock:
            self._entries[(sid, name)] = loaded
            self._versions[(sid, name)] = version
            self._entries.move_to_end((sid, name))
            self._evict(keep=(sid, name))

    def _evict(self, keep) -> None:
        sizes = {k: model_bytes(v[0]) for k, v in self._entries.items()}
        total = sum(sizes.values())
        for key in list(self._entries):
            if total <= self.budget:
                break
            if key != keep:
                total -= sizes[key]
                del self._entries[key]
                self._versions.pop(key, None)

    def drop(self, sid: str, name: str | None = None) -> None:
        """Forget one model of a session (a newer checkpoint came), or all of them (the session closed)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == sid and (name is None or k[1] == name)]:
                del self._entries[key]
                self._versions.pop(key, None)
        if name is None:
            release_memory()

    def peek(self, sid: str, name: str) -> tuple | None:
        """The held (model, tokenizer), or None; never loads."""
        with self._lock:
            return self._entries.get((sid, name))

    def names(self, sid: str) -> list[str]:
        with self._lock:
            return [n for s, n in self._entries if s == sid]

    def held_bytes(self) -> int:
        with self._lock:
            return sum(model_bytes(v[0]) for v in self._entries.values())


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc keeps them otherwise, so a closed
    session's models would still count in the process's RSS)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
