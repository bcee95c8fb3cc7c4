"""Whose credentials a read from the Hugging Face Hub uses.

A visitor of a shared app who types a Hub id (a dataset, a tokenizer, a model to start from or to learn from)
must reach the Hub as themselves: with their own sign-in token, or anonymously. The machine the app runs on
usually holds its owner's token (HF_TOKEN on a Space, a stored `hf auth login` on a laptop), and the Hub
libraries send it with every request unless told otherwise; used for a visitor's read, it would let anyone
fine-tune from the owner's private or gated repositories and export the weights.

So every Hub read in the engine passes `token=read_token()`, which is one of
- None: huggingface_hub's own default, the login of whoever runs the process (the CLI; a local app whose owner
  opted in with SLM_ALLOW_LOCAL_TOKEN=1);
- False: anonymous;
- a string: that token (a visitor's "Sign in with Hugging Face").

The app makes False its process default (`set_process_default`) and sets a visitor's token per request
(`reading_as`). A training worker is a separate process: `worker_env` removes the owner's token from its
environment, turns off huggingface_hub's implicit token, and hands over the visitor's token (if any) under a
name no library reads; `adopt_worker_env` in the worker takes it from there. Tokens never go into a file.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar

Token = str | bool | None

_token: ContextVar[Token] = ContextVar("slm_hub_read_token")
_process_default: Token = None  # the CLI's: huggingface_hub's own default
OWNER_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_TOKEN")
_HANDOVER = "SLM_HUB_READ_TOKEN"  # visitor token for a worker ("" = anonymous); absent = the process's own login


def read_token() -> Token:
    """The `token=` argument for a Hub read made now (see the module docstring)."""
    return _token.get(_process_default)


def set_process_default(token: Token) -> None:
    """What reads use when no request has said otherwise: False in the app unless its owner opted in."""
    global _process_default
    _process_default = token


@contextmanager
def reading_as(token: Token):
    """Hub reads inside this block (this thread / context) use `token`."""
    mark = _token.set(token)
    try:
        yield
    finally:
        _token.reset(mark)


def worker_env(env: dict, token: Token) -> dict:
    """`env` for a training worker whose Hub reads use `token`: None keeps the process's own login (a local
    owner's opt-in); False or a visitor's token removes every owner credential from the environment."""
    if token is None:
        return env
    out = {k: v for k, v in env.items() if k not in OWNER_TOKEN_VARS and k != _HANDOVER}
    out["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"  # never send a stored login unless a call passes one
    out["HF_TOKEN_PATH"] = os.devnull  # and there is no stored login to find
    out[_HANDOVER] = token if isinstance(token, str) else ""
    return out


def adopt_worker_env() -> None:
    """In a worker: read with what `worker_env` handed over (and take it out of the environment)."""
    if _HANDOVER in os.environ:
        set_process_default(os.environ.pop(_HANDOVER) or False)
