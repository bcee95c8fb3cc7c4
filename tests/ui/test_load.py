"""Load: the app as `python app.py` starts it (its own process, a blocking launch), 10 gradio_client sessions for
SLM_LOAD_SECONDS (default 80; longer runs: SLM_LOAD_SECONDS=240), in four phases of equal length.

Two trainer slots. Throughout, 3 sessions keep training tiny runs (restarting when one is done) and a prober
session (a process of its own) calls the cheap endpoints (/validate_spec, /compare, /sample_at) one after another,
timing each. The phases add one flood each:

- calm: nothing more;
- generating: 4 sessions keep generating from their own small models (trained during a warm-up);
- hostile: a session sends oversized prompts (over the character cap, and multi-MB bodies with and without
  Content-Length), oversized uploads and junk imports;
- cheap flood: a session keeps 60 /validate_spec calls in flight (the per-session caps admit 2 of one kind).

Checked:
- every response is a normal status / text (no ❌ or ⚠️ or exception), streamed statuses name their own run;
- no data crosses sessions: /compare lists only the session's own runs, another session's run name is refused by
  /generate and /next_tokens, each session's folder holds only its own runs;
- a waiting trainer was told its place in line at least once;
- every hostile request was refused (413, or a message naming the field) and the flood was capped;
- the prober's p95 latency in every flood is within 2x of the calm phase's (plus a small absolute slack);
- after the clients close (their heartbeat ends → demo.unload), every session folder is gone, no worker process
  remains and the app process's RSS is back near the baseline taken after the warm-up.

Runs by default (marker `load`; deselect with -m "not load"). Wall time ≈ SLM_LOAD_SECONDS + ~60 s.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import pytest

from app_process import app_process, wait_until
from conftest import app_job, small_spec
from slm_blocks.ui.state import Limits

pytestmark = [pytest.mark.load, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

DURATION = float(os.environ.get("SLM_LOAD_SECONDS", "80"))
RSS_MARGIN_MB = float(os.environ.get("SLM_LOAD_RSS_MARGIN_MB", "300"))
SPEC = small_spec(seq=32, d_model=32, layers=1).to_json()
IN_LINE = re.compile(r"number \*\*(\d+)\*\* in line")
LIMITS = dict(max_concurrent=2, max_time_s=300, max_runs_per_session=1000, max_params=2_000_000, max_upload_mb=1,
              max_request_kb=1024)
ENV = {"SLM_MAX_CONCURRENT_TRAININGS": 2, "SLM_MAX_TIME": 300, "SLM_MAX_RUNS_PER_SESSION": 1000,
       "SLM_MAX_PARAMS": 2_000_000, "SLM_MAX_UPLOAD_MB": 1, "SLM_MAX_REQUEST_KB": 1024}
P95_SLACK_S = float(os.environ.get("SLM_LOAD_P95_SLACK", "0.25"))  # absolute slack for tiny latencies
PHASES = ("calm", "generating", "hostile", "cheap flood")
FLOOD = 60  # /validate_spec calls the flooding session keeps in flight


def train_args(name, max_steps, builtin="stories"):
    return [app_job(name, max_steps, spec=SPEC, builtin=builtin, batch_size=2, eval_every=1000), None]


def gen_args(model, prompt="Once ", max_new=24):
    # seeded: unseeded, a briefly trained model sometimes samples end-of-text first and returns just the prompt
    return [model, prompt, max_new, 0.8, 50, 1.0, 1.0, "5"]


@pytest.fixture
def app(tmp_path, mlflow_uri):
    env = {**ENV, "MLFLOW_TRACKING_URI": mlflow_uri, "GRADIO_HEARTBEAT_INTERVAL": 1}
    with app_process(tmp_path, env) as served:
        yield served


class Book:
    """What the threads saw, shared under a lock; latencies are filed under the phase they started in."""

    def __init__(self):
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.served: Counter = Counter()
        self.positions: Counter = Counter()  # place in line -> times reported to a waiting trainer
        self.runs: dict[int, list[str]] = {}  # client index -> its run names
        self.latency: dict[str, list[float]] = {}
        self.probe: dict[str, list[float]] = {p: [] for p in PHASES}  # the prober's cheap calls, per phase
        self.starts: dict[str, float] = {}  # phase -> when it begins
        self.hostile: Counter = Counter()  # what the hostile client sent, by how it was refused
        self.flood: Counter = Counter()  # the flooder's joins: accepted / refused by the per-session cap

    def phase(self, at: float) -> str | None:
        current = None
        for name in PHASES:
            if at >= self.starts.get(name, float("inf")):
                current = name
        return current

    def error(self, who: str, what: str):
        with self.lock:
            self.errors.append(f"{who}: {what}")

    def count(self, kind: str, seconds: float):
        with self.lock:
            self.served[kind] += 1
            self.latency.setdefault(kind, []).append(seconds)


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def follow_training(c, name, max_steps, book: Book, who: str, deadline: float | None, trainer: bool) -> str | None:
    """Submit /train and check every streamed status; returns the final status (None if the deadline hit)."""
    t0 = time.time()
    job = c.submit(*train_args(name, max_steps), api_name="/train")
    seen = 0
    while True:
        done = job.done()
        outs = job.outputs()
        for out in outs[seen:]:
            status = out[0]
            if not status.startswith(f"**{name}** — ") or "❌" in status or "⚠️" in status:
                book.error(who, f"unexpected status for {name}: {status[:200]!r}")
            m = IN_LINE.search(status)
            if m and trainer:
                with book.lock:
                    book.positions[int(m.group(1))] += 1
        seen = len(outs)
        if done:
            break
        if deadline is not None and time.time() > deadline:
            return None  # leave it running or queued: closing the session must clean it up
        time.sleep(0.25)
    try:
        job.result()
    except Exception as e:
        book.error(who, f"/train {name} raised {type(e).__name__}: {e}")
        return None
    final = outs[-1][0] if outs else ""
    if "✅ Done" not in final:
        book.error(who, f"{name} did not finish: {final[:200]!r}")
    book.count("train", time.time() - t0)
    return final


def check_compare(c, own: list[str], book: Book, who: str):
    t0 = time.time()
    table, _, _, msg = c.predict(False, "step", api_name="/compare")
    runs = [dict(zip(table["headers"], r)).get("run") for r in table["data"]] if table and table.get("data") else []
    if not set(runs) <= set(own) or "⚠️" in (msg or ""):
        book.error(who, f"/compare shows {runs} (own runs {own}), message {msg!r}")
    book.count("compare", time.time() - t0)
    return runs


def trainer(i: int, c, book: Book, deadline: float):
    who = f"trainer {i}"
    k = 0
    try:
        while time.time() < deadline:
            name = f"t{i}-r{k}"
            k += 1
            with book.lock:
                book.runs[i].append(name)
            final = follow_training(c, name, 20 + 5 * (k % 3), book, who, deadline, trainer=True)
            if final is None:
                break
            if k % 2 == 0 and time.time() < deadline:
                check_compare(c, list(book.runs[i]), book, who)
    except Exception as e:
        book.error(who, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")


PROBER = r'''
import json, sys, time
from gradio_client import Client

url, spec, start, deadline = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
c = Client(url, verbose=False)
calls = [("validate_spec", lambda: c.predict(spec, api_name="/validate_spec")[0], lambda out: "valid" in out),
         ("compare", lambda: c.predict(False, "step", api_name="/compare")[3], lambda out: "⚠️" not in (out or "")),
         ("sample_at", lambda: c.predict("nope", 1, api_name="/sample_at"),
          lambda out: "Pick one of this session's runs" in out)]
while time.time() < start:
    time.sleep(0.05)
k = 0
while time.time() < deadline:
    kind, call, ok = calls[k % len(calls)]
    k += 1
    t0 = time.time()
    try:
        out = call()
        good = ok(out)
    except Exception as e:
        out, good = f"{type(e).__name__}: {e}", False
    print(json.dumps({"kind": kind, "t0": t0, "s": time.time() - t0, "ok": good, "out": str(out)[:200]}), flush=True)
    time.sleep(0.1)
c.close()
'''


def prober(url: str, book: Book, start: float, deadline: float):
    """Another visitor using the cheap endpoints all along, in a process of its own (its latency must not
    include this test process's threads competing for one interpreter); each call is filed under its phase."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PROBER, url, SPEC, str(start), str(deadline)], capture_output=True,
                         text=True, timeout=deadline - time.time() + 180)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not rows:
        book.error("prober", f"exited with {out.returncode}: {out.stderr[-1500:]}")
    for r in rows:
        if not r["ok"]:
            book.error("prober", f"/{r['kind']}: {r['out']!r}")
        with book.lock:
            book.probe[book.phase(r["t0"])].append(r["s"])
        book.count(f"probe {r['kind']}", r["s"])


def generator(i: int, c, model: str, others: list[str], book: Book, start: float, deadline: float):
    who = f"generator {i}"
    k = 0
    while time.time() < start:
        time.sleep(0.05)
    try:
        while time.time() < deadline:
            k += 1
            t0 = time.time()
            text = c.predict(*gen_args(model, prompt="Once "), api_name="/generate")
            if not (isinstance(text, str) and text.startswith("Once ") and len(text) > len("Once ")
                    and "⚠️" not in text):
                book.error(who, f"/generate {model}: {text!r}")
            book.count("generate", time.time() - t0)
            if k % 3 == 0:  # another session's model: refused
                other = others[k % len(others)]
                text = c.predict(*gen_args(other), api_name="/generate")
                if not (text.startswith("⚠️") and "this session" in text):
                    book.error(who, f"/generate with another session's run {other!r} gave {text[:200]!r}")
                book.count("generate (other session, refused)", 0)
                df, msg = c.predict(other, "Once ", api_name="/next_tokens")
                if df.get("data") or not msg.startswith("⚠️"):
                    book.error(who, f"/next_tokens with another session's run {other!r}: {df}, {msg!r}")
                book.count("next_tokens (other session, refused)", 0)
            if k % 5 == 0:
                t0 = time.time()
                df, msg = c.predict(model, "Once upon a ", api_name="/next_tokens")
                if msg or not df.get("data"):
                    book.error(who, f"/next_tokens {model}: {df}, {msg!r}")
                book.count("next_tokens", time.time() - t0)
                check_compare(c, [model], book, who)
    except Exception as e:
        book.error(who, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")


def hostile(c, url: str, model: str, book: Book, start: float, deadline: float):
    """From `start` until `deadline`: oversized prompts (over the character cap, and multi-MB bodies with and
    without Content-Length) to the three prompt endpoints, oversized uploads and junk imports. Every answer must
    be a refusal: 413, or a message naming the field."""
    import httpx
    from gradio_client import handle_file

    limits = Limits(**LIMITS)
    over_cap = "x" * (limits.max_prompt_chars * 2)
    big = json.dumps({"data": gen_args(model, "y" * 3_000_000), "session_hash": c.session_hash}).encode()
    upload_over_file_cap = b"z" * (limits.max_file_bytes + 2**20)
    upload_over_request_cap = b"z" * (limits.max_upload_request_bytes + 2**20)
    junk = Path(os.environ.get("TMPDIR", "/tmp")) / f"hostile-{os.getpid()}.safetensors"
    junk.write_bytes(b"\x00" * 4096)
    who = "hostile"

    def refused(kind: str, ok: bool, what):
        with book.lock:
            book.hostile[kind] += 1
        if not ok:
            book.error(who, f"{kind} was not refused: {str(what)[:200]}")

    while time.time() < start:
        time.sleep(0.05)
    k = 0
    try:
        with httpx.Client(timeout=60) as http:
            while time.time() < deadline:
                k += 1
                api = ("generate", "next_tokens", "attention_map")[k % 3]
                try:
                    r = http.post(f"{url}gradio_api/call/{api}", content=big,
                                  headers={"content-type": "application/json"})
                    refused("3 MB body", r.status_code == 413, r.status_code)
                except httpx.TransportError:  # the server closed the connection mid-send: refused too
                    refused("3 MB body", True, None)
                try:
                    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
                    r = http.post(f"{url}gradio_api/call/{api}", content=chunks,
                                  headers={"content-type": "application/json"})
                    refused("3 MB chunked body", r.status_code == 413, r.status_code)
                except httpx.TransportError:
                    refused("3 MB chunked body", True, None)
                if api == "generate":
                    out = c.predict(*gen_args(model, over_cap), api_name="/generate")
                elif api == "next_tokens":
                    out = c.predict(model, over_cap, api_name="/next_tokens")[1]
                else:
                    out = c.predict(model, over_cap, 0, 0, api_name="/attention_map")[1]
                refused("prompt over the cap", out.startswith("⚠️ Prompt: is"), out)
                for data, kind in ((upload_over_file_cap, "upload over the file cap"),
                                   (upload_over_request_cap, "upload over the request cap")):
                    try:
                        r = http.post(f"{url}gradio_api/upload", files={"files": ("x.txt", data)})
                        refused(kind, r.status_code == 413, (r.status_code, r.text[:100]))
                    except httpx.TransportError:
                        refused(kind, True, None)
                msg = c.predict([handle_file(str(junk))], api_name="/import_model")[0]
                refused("junk import", msg.startswith("❌"), msg)
    except Exception as e:
        book.error(who, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")
    finally:
        junk.unlink(missing_ok=True)


def flooder(url: str, book: Book, start: float, deadline: float):
    """One session keeps FLOOD /validate_spec calls in flight: FLOOD threads, each joining again as soon as its
    call has completed (a refused one after the Retry-After the refusal names). Raw HTTP and one stream of results
    for the session: the flooder's own CPU must not be what slows the others down."""
    import httpx

    session = "flooder"
    fn = next(d["id"] for d in httpx.get(url + "config", timeout=30).json()["dependencies"]
              if d.get("api_name") == "validate_spec")
    completed: dict[str, threading.Event] = {}
    lock = threading.Lock()

    def waiter(event_id: str) -> threading.Event:
        with lock:
            return completed.setdefault(event_id, threading.Event())

    def read_results():
        while time.time() < deadline + 5:
            try:
                with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session},
                                  timeout=30) as r:
                    for line in r.iter_lines():
                        if line.startswith("data:"):
                            msg = json.loads(line[5:])
                            if msg.get("msg") == "process_completed":
                                waiter(msg["event_id"]).set()
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)

    def worker():
        with httpx.Client(timeout=60) as http:
            while time.time() < deadline:
                r = http.post(url + "gradio_api/queue/join", json={"data": [SPEC], "fn_index": fn, "session_hash":
                                                                   session, "event_data": None, "trigger_id": None})
                kind = "accepted" if r.status_code == 200 else \
                    "refused (session cap)" if "This session already has" in r.text else f"other {r.status_code}"
                with book.lock:
                    book.flood[kind] += 1
                if kind == "accepted":
                    waiter(r.json()["event_id"]).wait(30)
                else:  # told to wait: it does, for as long as the answer says (else a second)
                    time.sleep(float(r.headers.get("retry-after") or 1))

    while time.time() < start:
        time.sleep(0.05)
    threading.Thread(target=read_results, daemon=True).start()
    threads = [threading.Thread(target=worker) for _ in range(FLOOD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def app_rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def worker_processes(pid: int) -> list:
    import psutil

    def cmdline(p):
        try:
            return p.cmdline()
        except Exception:
            return []
    return [(p.pid, cmdline(p)[-1:]) for p in psutil.Process(pid).children(recursive=True)
            if any("slm_blocks.training.worker" in part for part in cmdline(p))]


def test_ten_sessions_under_load_as_app_py_serves_them(app):
    from gradio_client import Client

    url, sessions_dir = app.url, app.data_dir / "sessions"
    book = Book()
    t_start = time.time()
    clients = [Client(url, verbose=False) for _ in range(8)]
    sids = [c.session_hash for c in clients]
    assert len(set(sids)) == 8
    for i in range(8):
        book.runs[i] = []

    # warm-up: each generator session trains its own small model (4 runs, 2 trainer slots), then generates once
    # (3 is the hostile session: it sends nothing until its phase)
    gen_idx = [4, 5, 6, 7]
    models = {i: f"g{i}-model" for i in gen_idx}
    warm = []
    for i in gen_idx:
        book.runs[i].append(models[i])
        warm.append(threading.Thread(target=lambda i=i: follow_training(
            clients[i], models[i], 30, book, f"generator {i} (warm-up)", None, trainer=False)))
    for t in warm:
        t.start()
    for t in warm:
        t.join(240)
    assert not book.errors, book.errors
    for i in gen_idx:
        text = clients[i].predict(*gen_args(models[i]), api_name="/generate")
        assert text.startswith("Once ") and "⚠️" not in text, text
    wait_until(lambda: not worker_processes(app.pid), 60, "the warm-up's workers to exit")
    baseline = app_rss_mb(app.pid)
    warmup_s = time.time() - t_start

    # the load: four phases of equal length, the trainers and the prober throughout
    begin = time.time() + 1
    quarter = DURATION / 4
    book.starts = {p: begin + k * quarter for k, p in enumerate(PHASES)}
    deadline = begin + DURATION
    ends = {p: book.starts[p] + quarter for p in PHASES}
    threads = [threading.Thread(target=trainer, args=(i, clients[i], book, deadline)) for i in range(3)]
    threads.append(threading.Thread(target=prober, args=(url, book, begin, deadline)))
    threads += [threading.Thread(target=generator, args=(
        i, clients[i], models[i], [models[j] for j in gen_idx if j != i], book, book.starts["generating"],
        ends["generating"])) for i in gen_idx]
    threads.append(threading.Thread(target=hostile, args=(clients[3], url, models[4], book, book.starts["hostile"],
                                                          ends["hostile"])))
    threads.append(threading.Thread(target=flooder, args=(url, book, book.starts["cheap flood"], ends["cheap flood"])))
    peak = baseline
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, app_rss_mb(app.pid))
        time.sleep(0.5)
        assert time.time() < deadline + 180, "a client thread hangs"
    alive = Client(url, verbose=False)  # the app still answers a newcomer after the floods
    assert "valid" in alive.predict(SPEC, api_name="/validate_spec")[0]
    alive.close()

    # sessions only ever held their own runs (server side, too: the session folders)
    for i, c in enumerate(clients):
        folder = sessions_dir / c.session_hash
        assert folder.is_dir(), f"session {i} disappeared while its client was still open"
        runs = {p.name for p in (folder / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")} \
            if (folder / "runs").is_dir() else set()  # (a worker's empty working directory is .cwd-*)
        # (a run submitted just as the deadline hit may not be registered yet)
        assert set(book.runs[i][:-1]) <= runs <= set(book.runs[i]), (i, runs, book.runs[i])
        imports = list((folder / "imports").iterdir()) if (folder / "imports").is_dir() else []
        assert not imports, (i, imports)  # no junk import stuck

    # close every client: the heartbeat ends, Gradio calls demo.unload, the app closes the session
    closed_at = time.time()
    for c in clients:
        c.close()
    roots = [sessions_dir / s for s in sids]
    end = closed_at + 60
    while time.time() < end and (any(r.exists() for r in roots) or worker_processes(app.pid)):
        time.sleep(0.25)
    cleanup_s = time.time() - closed_at
    left_dirs = [str(r) for r in roots if r.exists()]
    workers = worker_processes(app.pid)
    time.sleep(2)  # nothing comes back late (a chained event re-creating a closed session)
    assert not [r for r in roots if r.exists()]
    after = app_rss_mb(app.pid)

    stats = {p: (quantile(book.probe[p], 0.5), quantile(book.probe[p], 0.95), len(book.probe[p])) for p in PHASES}
    calm95 = stats["calm"][1]
    rows = "\n".join(f"  {p:12s} p50 {s[0]:.3f} s  p95 {s[1]:.3f} s  ({s[2]} calls)  x{s[1] / calm95:.2f} of calm"
                     for p, s in stats.items())
    summary = (f"\nload: {DURATION:.0f} s in 4 phases (warm-up {warmup_s:.0f} s), 10 sessions, 2 trainer slots, the "
               f"app as `python app.py`\nanother client's cheap calls (validate_spec, compare, sample_at):\n{rows}\n"
               f"requests served: {dict(book.served)}\nhostile requests, all refused: {dict(book.hostile)}\n"
               f"flood joins: {dict(book.flood)}\n"
               f"latency mean/max s: { {k: (round(sum(v) / len(v), 2), round(max(v), 2)) for k, v in book.latency.items()} }\n"
               f"queue positions reported to waiting trainers: {dict(sorted(book.positions.items()))}\n"
               f"cleanup after close {cleanup_s:.1f} s; app RSS baseline {baseline:.0f} MB, peak {peak:.0f} MB, "
               f"after close {after:.0f} MB ({after - baseline:+.0f} MB)\nerrors: {book.errors[:10]}")
    print(summary)
    Path(app.data_dir.parent / "load-summary.txt").write_text(summary)
    assert not book.errors, summary
    assert book.served["train"] >= 3 and book.served["generate"] >= 8, summary
    assert book.served["generate (other session, refused)"] >= 1, summary
    assert book.served["compare"] >= 1, summary
    assert book.positions, "no waiting trainer was ever told its place in line" + summary
    assert not left_dirs, f"session folders left behind: {left_dirs}"
    assert not workers, f"worker processes left: {workers}"
    assert after < baseline + RSS_MARGIN_MB, summary
    kinds = {"3 MB body", "3 MB chunked body", "prompt over the cap", "upload over the file cap",
             "upload over the request cap", "junk import"}
    assert kinds <= set(book.hostile), summary
    assert book.flood["refused (session cap)"] >= 1 and not [k for k in book.flood if k.startswith("other")], summary
    for p in PHASES:
        assert stats[p][2] >= 5, summary
        assert stats[p][1] <= 2 * calm95 + P95_SLACK_S, summary
