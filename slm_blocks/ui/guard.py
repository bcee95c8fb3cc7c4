"""What keeps one client from taking a shared app down: request size caps, per-session limits and knowing
which browser tabs are still open.

- `RequestGuard`, an ASGI middleware in front of Gradio's routes: a request body over the cap is answered
  413 before it is read (Content-Length) or as soon as it grows past the cap (chunked bodies), so a 30 MB
  prompt never reaches the JSON parser; uploads have their own, larger cap, and a budget per client address
  and for Gradio's upload folder as a whole (`UploadBudget`). It also counts the open
  heartbeat connections of each session: an open browser tab (or a gradio_client) keeps one open, which
  tells the sweeper (sweeper.py) which idle sessions are still wanted.
- `Gate`: at most one request of a kind (generate, the inspect views) running per session; a second one is
  answered at once instead of taking a second worker slot.
- `guard_launch`: the app's `launch()` with these defaults (Gradio's per-file upload cap, the middleware), a cap
  on the events one session may have waiting or running in Gradio's queue and the sweeper, all installed
  before the server starts (`launch()` blocks under `python app.py`).

The caps come from `Limits` (state.py); the README's "Security and limits" lists them.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections import Counter
from contextlib import contextmanager

_HEARTBEAT = re.compile(r"/heartbeat/([^/]+)/?$")


class Liveness:
    """Open heartbeat connections per session (thread-safe; the middleware runs on the event loop, the
    sweeper in a thread)."""

    def __init__(self):
        self._open: Counter = Counter()
        self._lock = threading.Lock()

    def opened(self, sid: str) -> None:
        with self._lock:
            self._open[sid] += 1

    def closed(self, sid: str) -> None:
        with self._lock:
            self._open[sid] -= 1
            if self._open[sid] <= 0:
                del self._open[sid]

    def is_open(self, sid: str) -> bool:
        with self._lock:
            return self._open.get(sid, 0) > 0


class UploadBudget:
    """What may still be uploaded: Gradio keeps uploads in its own folder (for hours, outside every session's
    quota), and an upload request names no session, so uploads are capped per client address over a rolling
    window and for the folder as a whole. Thread-safe."""

    def __init__(self, per_client_bytes: int, total_bytes: int, folder, window_s: float = 3600.0):
        self.per_client, self.total, self.folder, self.window = per_client_bytes, total_bytes, folder, window_s
        self._sent: dict[str, list[tuple[float, int]]] = {}  # client -> (when, bytes) within the window
        self._in_flight = 0
        self._measured = (0.0, -1e9)  # (bytes in the folder, when)
        self._lock = threading.Lock()

    def _folder_bytes(self, now: float) -> float:
        used, when = self._measured
        if now - when > 5.0:
            from .sweeper import folder_mb

            used = folder_mb(self.folder()) * 2**20 if self.folder().exists() else 0.0
            self._measured = (used, now)
        return used

    def allowance(self, client: str) -> tuple[int, str]:
        """(bytes this client may upload now, why not more): the smaller of its share and the folder's room."""
        now = time.time()
        with self._lock:
            recent = [(t, n) for t, n in self._sent.get(client, []) if now - t < self.window]
            self._sent[client] = recent
            mine = self.per_client - sum(n for _, n in recent) if self.per_client else 1 << 62
            room = self.total - self._folder_bytes(now) - self._in_flight if self.total else 1 << 62
        if mine <= room:
            return max(0, int(mine)), (f"uploads from your address reached {self.per_client // 2**20:,} MB within "
                                       f"{self.window / 60:.0f} minutes, the most this app takes; try again later")
        return max(0, int(room)), ("this app's upload space for all users is full just now; try again in a few "
                                   "minutes")

    def started(self, nbytes: int) -> None:
        with self._lock:
            self._in_flight += nbytes

    def finished(self, client: str, declared: int, received: int) -> None:
        with self._lock:
            self._in_flight -= declared
            if received:
                self._sent.setdefault(client, []).append((time.time(), received))
                self._measured = (self._measured[0] + received, self._measured[1])


class RequestGuard:
    """ASGI middleware: body caps (413 with a message), the upload budget and heartbeat bookkeeping; see the
    module docstring."""

    def __init__(self, app, max_body: int, max_upload: int, liveness: Liveness | None = None,
                 session_key=lambda sid: sid, uploads: UploadBudget | None = None, join_refusal=None):
        self.app, self.max_body, self.max_upload = app, max_body, max_upload
        self.liveness, self.session_key, self.uploads = liveness, session_key, uploads
        self.join_refusal = join_refusal  # (session hash, fn index) -> a message when the queue would refuse it

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        beat = _HEARTBEAT.search(path) if scope.get("method") == "GET" else None
        if beat and self.liveness is not None:
            sid = self.session_key(beat.group(1))
            self.liveness.opened(sid)
            try:
                return await self.app(scope, receive, send)
            finally:
                self.liveness.closed(sid)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        upload = path.rstrip("/").endswith("/upload")
        cap = self.max_upload if upload else self.max_body
        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            declared = int(length) if length is not None else None
        except ValueError:
            declared = None
        if declared is not None and declared > cap:
            return await _too_large(send, cap, upload)
        if self.join_refusal is not None and path.endswith("/queue/join") and (declared or 0) <= 65536 < cap:
            refused, receive = await self._early_refusal(receive)
            if refused:
                return await _refuse(send, 429, refused, retry_after=1)
        budget_why = None  # set when the upload budget, not the size cap, bounds this request
        if upload and self.uploads is not None:
            import anyio

            client = client_address(_ScopeRequest(scope))
            allowed, why = await anyio.to_thread.run_sync(self.uploads.allowance, client)  # may measure a folder
            if (declared or 1) > allowed:
                return await _refuse(send, 413, f"Upload refused: {why}")
            if allowed < cap:
                cap, budget_why = allowed, why
            self.uploads.started(declared or 0)
        seen, over = 0, False

        async def counted():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    over = True
                    return {"type": "http.disconnect"}  # the route stops reading; nothing more is buffered
            return message

        started = False

        async def guarded_send(message):
            nonlocal started
            if over and not started:
                return  # the route's answer to a "disconnect" is replaced by the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not over:
                raise
        finally:
            if upload and self.uploads is not None:
                self.uploads.finished(client, declared or 0, seen)
        if over and not started:
            await (_refuse(send, 413, f"Upload refused: {budget_why}") if budget_why else
                   _too_large(send, cap, upload))


    async def _early_refusal(self, receive):
        """(message, receive) for a queue join: refused here, before Gradio's route parses and validates it,
        when the queue would refuse it anyway (the per-session caps). A session that re-sends refused calls as
        fast as it can then costs the server little; `receive` replays the body that was read."""
        chunks, more, size = [], True, 0
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None, _replay(chunks + [message], receive)
            chunks.append(message)
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
            if more and size > 65536:  # not a join a page sends: the size caps deal with it
                return None, _replay(chunks, receive)
        try:
            body = json.loads(b"".join(m.get("body", b"") for m in chunks))
            refused = self.join_refusal(body.get("session_hash"), body.get("fn_index"))
        except (ValueError, AttributeError, TypeError):
            refused = None  # Gradio's route answers malformed bodies itself
        return refused, _replay(chunks, receive)


def _replay(messages, then):
    """An ASGI receive that gives `messages` (already read) again, then goes on with `then`."""
    pending = list(messages)

    async def receive():
        return pending.pop(0) if pending else await then()
    return receive


class _ScopeRequest:
    """The headers and peer of an ASGI scope, as client_address reads them from a gr.Request."""

    def __init__(self, scope):
        from types import SimpleNamespace

        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        peer = scope.get("client")
        self.client = SimpleNamespace(host=peer[0] if peer else None)


async def _too_large(send, cap: int, upload: bool) -> None:
    what = "an upload" if upload else "a request"
    detail = (f"{what} larger than {cap // 2**20} MB is refused by this app" if upload else
              f"{what} larger than {cap // 1024} KB is refused by this app (prompts and jobs are much smaller)")
    await _refuse(send, 413, detail)


async def _refuse(send, status: int, detail: str, retry_after: int | None = None) -> None:
    body = json.dumps({"detail": detail, "error": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")] + ([(b"retry-after", str(retry_after).encode())] if retry_after else [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Busy(ValueError):
    """A second request of a kind while the session's first is still running."""


class Gate:
    """At most one running request per (session, kind)."""

    def __init__(self):
        self._held: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, sid: str, kind: str, what: str):
        key = (sid, kind)
        with self._lock:
            if key in self._held:
                raise Busy(f"{what}: this session's previous request is still running; wait for it to finish")
            self._held.add(key)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(key)


def client_address(request) -> str:
    """The address a request came from, for per-client limits. Behind a proxy (on Spaces, or wherever
    SLM_TRUSTED_PROXIES says how many proxies stand in front of the app) it is the X-Forwarded-For entry that
    the outermost trusted proxy appended: that many entries from the right. Entries further left were written
    by the client itself and prove nothing (three made-up first entries once gave one visitor three training
    slots). Without a proxy, the socket's peer. Best effort: behind one NAT a class shares an address (raise
    SLM_MAX_TRAININGS_PER_CLIENT there)."""
    import os

    headers = getattr(request, "headers", None) or {}
    hops = _trusted_proxies()
    if hops:
        forwarded = headers.get("x-forwarded-for") if hasattr(headers, "get") else None
        entries = [e.strip() for e in (forwarded or "").split(",") if e.strip()]
        if entries:
            return entries[-min(hops, len(entries))][:64]
    client = getattr(request, "client", None)
    return str(getattr(client, "host", None) or "local")[:64]


def _trusted_proxies() -> int:
    """How many proxies in front of the app append to X-Forwarded-For: SLM_TRUSTED_PROXIES, else 1 on a Space
    (its proxy), else 0."""
    import os

    try:
        return max(0, int(os.environ["SLM_TRUSTED_PROXIES"]))
    except (KeyError, ValueError):
        return 1 if os.environ.get("SPACE_ID") else 0


def guard_launch(demo, store) -> None:
    """Give `demo.launch` this app's defaults (see the module docstring); explicit arguments still win.
    `store`: the app's SessionStore (its limits, liveness, key() for session ids and the sweeper)."""
    from starlette.middleware import Middleware

    limits = store.limits
    original = demo.launch

    @functools.wraps(original)
    def launch(*args, **kwargs):
        kwargs.setdefault("max_file_size", limits.max_file_bytes)
        app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
        from .gradio_folder import upload_folder

        uploads = UploadBudget(limits.uploads_per_client_mb * 2**20, limits.upload_space_mb * 2**20, upload_folder)
        app_kwargs["middleware"] = list(app_kwargs.get("middleware") or []) + [Middleware(
            RequestGuard, max_body=limits.max_request_kb * 1024, max_upload=limits.max_upload_request_bytes,
            liveness=store.liveness, session_key=store.key, uploads=uploads,
            join_refusal=lambda sid, fn: session_events_refusal(demo, sid, fn, limits.max_pending_per_session))]
        # before the original: under `python app.py` it blocks until the server stops, so nothing after it runs
        cheap_by_default(demo)
        cap_session_events(demo, limits.max_pending_per_session)
        store.start_sweeper(limits.sweep_interval_s)
        return original(*args, app_kwargs=app_kwargs, **kwargs)

    closer = demo.close

    @functools.wraps(closer)
    def close(*args, **kwargs):
        if store.sweeper is not None:
            store.sweeper.stop()
        return closer(*args, **kwargs)

    demo.launch, demo.close = launch, close


def cheap_by_default(demo) -> None:
    """An event that declares no concurrency limit is a cheap one (a validation, a preview, a table, a redraw)
    and runs at once, beside any number of others: with Gradio's default of one at a time per event, one session
    holding 60 /validate_spec calls made every other visitor's wait 10 s. The slow ones (generation, the inspect
    views, exports, imports, pushes, pruning) declare their own limits and groups where they are wired; how many
    events one session may have in flight is capped by cap_session_events."""
    if getattr(demo, "_queue", None) is not None:
        demo._queue.default_concurrency_limit = None


SAME_KIND = 2  # events of one function one session may have waiting or running (a page sends one at a time)


def cap_session_events(demo, limit: int, same_kind: int = SAME_KIND) -> None:
    """At most `limit` events of one session waiting or running in Gradio's queue (0: no cap), and at most
    `same_kind` of one function; one more is refused with a message instead of filling the queue that every user
    shares. The second cap is what keeps a flood of one cheap call from taking the interpreter from everyone:
    cheap calls run at once (cheap_by_default), so 16 of one session's would share the CPU 16:1 with another
    visitor's one. A page never has more than one event of a kind in flight (Gradio keeps only the last pending
    trigger), so browsers do not meet it."""
    queue = getattr(demo, "_queue", None)
    if queue is None or limit <= 0 or getattr(queue, "_slm_capped", False):
        return
    push = queue.push

    async def capped_push(body, *args, **kwargs):
        refused = session_events_refusal(demo, getattr(body, "session_hash", None), getattr(body, "fn_index", None),
                                         limit, same_kind)
        if refused:
            return False, refused, "error"
        try:
            return await push(body, *args, **kwargs)
        except KeyError:  # an event of a widget that a redraw (gr.render) has just replaced: refused, not a 500
            return False, "That part of the page was just redrawn: try again", "error"

    queue.push = capped_push
    queue._slm_capped = True


def session_events_refusal(demo, sid, kind, limit: int, same_kind: int = SAME_KIND) -> str | None:
    """The message refusing one more event of function `kind` from session `sid`, or None (cap_session_events;
    the request guard asks too, to refuse before Gradio's route does any work)."""
    queue = getattr(demo, "_queue", None)
    if queue is None or limit <= 0 or not isinstance(sid, str):
        return None
    mine = [e for e in list(queue.event_ids_to_events.values()) if e.session_hash == sid]
    if len(mine) >= limit:
        return f"This session already has {len(mine)} requests waiting or running (at most {limit}); wait for them " \
               "to finish"
    alike = sum(1 for e in mine if getattr(getattr(e, "fn", None), "_id", None) == kind)
    if kind is not None and alike >= same_kind:
        return f"This session already has {alike} requests of this kind waiting or running (at most {same_kind}); " \
               "wait for them to finish"
    return None


def one_at_a_time(kind: str, what: str, refuse):
    """Decorator for a Handlers method: at most one call of `kind` running per session (Gate); a second
    gets `refuse(message)` at once (the method's own outputs for a message). Works for plain methods and
    generators (held until the generator ends or is cancelled)."""
    import inspect

    def session_id(store, args, kwargs) -> str:
        request = kwargs.get("request") or next((a for a in reversed(args) if hasattr(a, "session_hash")), None)
        return store.key(getattr(request, "session_hash", None))

    def deco(fn):
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen(self, *args, **kwargs):
                try:
                    with self.store.gate.hold(session_id(self.store, args, kwargs), kind, what):
                        yield from fn(self, *args, **kwargs)
                except Busy as e:
                    yield refuse(str(e))
            return gen

        @functools.wraps(fn)
        def call(self, *args, **kwargs):
            try:
                with self.store.gate.hold(session_id(self.store, args, kwargs), kind, what):
                    return fn(self, *args, **kwargs)
            except Busy as e:
                return refuse(str(e))
        return call

    return deco
