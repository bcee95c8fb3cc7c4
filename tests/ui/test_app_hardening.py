"""Issue 10: what an outside attack on a shared app found, each tried again against a real app (gradio_client and
raw HTTP on loopback, the app in-process) or against the handlers directly.

1. Oversized prompts and bodies are refused before anything parses or tokenizes them (peak RSS bounded), and one
   session cannot take every worker of an endpoint.
2. A Hub-id field never reads a folder of the server (the preview runs in the app's own process).
4. /push never uses the server's own token unless a local owner opted in (never on Spaces).
5. Imports go through the caps before allocating; their errors show no server path; a failed one leaves no files.
6. Idle REST sessions, a crashed process's folders and their MLflow artifacts are swept; a disk budget holds.
7. Number fields get field-named messages, user text reaches Markdown escaped, huge values are not logged.
"""

from __future__ import annotations

import dataclasses
import gc
import html
import json
import logging
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import app_job, running_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROMPT_CAP = 2000
BODY_KB = 256


@pytest.fixture(scope="module")
def app(tmp_path_factory, mlflow_uri):
    from slm_blocks.ui.state import Limits, SessionStore

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MLFLOW_TRACKING_URI")}
    os.environ.update(OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=mlflow_uri)
    data_dir = tmp_path_factory.mktemp("hardening")
    store = SessionStore(Limits(data_dir=data_dir, max_params=2_000_000, max_prompt_chars=PROMPT_CAP,
                                max_request_kb=BODY_KB, max_upload_mb=1, max_time_s=300))
    try:
        with running_app(store) as (demo, url):
            yield SimpleNamespace(demo=demo, url=url, store=store, data_dir=data_dir)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny exported model (Llama class, byte tokenizer) to import through the app: no training worker."""
    import torch

    from slm_blocks import ModelSpec, build_model
    from slm_blocks.sharing.export import export_hf
    from slm_blocks.training.tokenization import build_tokenizer

    tok = build_tokenizer("byte")
    spec = ModelSpec.from_dict({"vocab_size": len(tok), "d_model": 32, "max_seq_len": 64, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": "rope"},
        {"type": "transformer", "attention": {"n_heads": 2}, "mlp": {"activation": "silu", "gated": True},
         "norm": {"kind": "rmsnorm"}}, {"type": "final_norm", "norm": {"kind": "rmsnorm"}}, {"type": "lm_head"}]})
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model") / "tiny"
    export_hf(build_model(spec), tok, out, verify=False)
    return out


def client(app):
    from gradio_client import Client

    return Client(app.url, verbose=False)


def import_model(c, folder: Path) -> str:
    from gradio_client import handle_file

    msg, update = c.predict([handle_file(str(p)) for p in sorted(folder.iterdir()) if p.is_file()],
                            api_name="/import_model")
    assert msg.startswith("✅"), msg
    return update["value"]


def gen_args(model, prompt, top_k=50):
    return [model, prompt, 8, 0.8, top_k, 1.0, 1.0, "1", "fp32"]


def raw_call(url: str, api: str, body, *, headers=None) -> tuple[int, str]:
    """POST to Gradio's /call API (a JSON text, or bytes / an iterator for chunked bodies); (status, the last
    data or error the stream sends, or the refusal's text)."""
    import httpx

    r = httpx.post(f"{url}gradio_api/call/{api}", content=body,
                   headers={"content-type": "application/json", **(headers or {})}, timeout=60)
    if r.status_code != 200:
        return r.status_code, r.text
    event_id = r.json()["event_id"]
    with httpx.stream("GET", f"{url}gradio_api/call/{api}/{event_id}", timeout=60) as s:
        text = "".join(s.iter_text())
    last = json.loads([line[5:].strip() for line in text.splitlines() if line.startswith("data:")][-1])
    return 200, last[-1] if isinstance(last, list) and last else json.dumps(last)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def trimmed_rss() -> float:
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return rss_mb()


class PeakRSS:
    """The process's peak RSS while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        self.peak, self._stop = rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- 1. one request cannot take the app down


def test_oversized_prompts_and_bodies_never_reach_the_tokenizer(app, model_folder):
    """A 5 MB prompt (with and without Content-Length) is answered 413 before it is read; a prompt over the
    character cap gets a message naming the field from all three endpoints; the process's peak RSS stays within
    60 MB of its baseline and comes back to it."""
    c = client(app)
    name = import_model(c, model_folder)
    assert c.predict(*gen_args(name, "Once "), api_name="/generate").startswith("Once ")
    baseline = trimmed_rss()
    huge = "a" * 5_000_000
    session = json.dumps(c.session_hash)
    body = f'{{"data": {json.dumps(gen_args(name, huge))}, "session_hash": {session}}}'.encode()
    over = "b" * (PROMPT_CAP * 50)  # 100 KB: under the body cap, over the prompt cap
    with PeakRSS() as rss:
        status, text = raw_call(app.url, "generate", body)
        assert status == 413 and "KB" in text, (status, text[:200])
        status, text = raw_call(app.url, "next_tokens", (body[i:i + 65536] for i in range(0, len(body), 65536)))
        assert status == 413, (status, text[:200])  # chunked: no Content-Length, cut off once past the cap
        out = c.predict(*gen_args(name, over), api_name="/generate")
        assert out.startswith("⚠️ Prompt: is 100,000 characters") and str(PROMPT_CAP) in out.replace(",", ""), out
        df, msg = c.predict(name, over, api_name="/next_tokens")
        assert not df["data"] and msg.startswith("⚠️ Prompt: is 100,000 characters"), msg
        fig, msg = c.predict(name, over, 0, 0, api_name="/attention_map")
        assert fig is None and msg.startswith("⚠️ Prompt: is 100,000"), msg
    after = trimmed_rss()
    print(f"\nRSS baseline {baseline:.0f} MB, peak {rss.peak:.0f} MB, after {after:.0f} MB")
    assert rss.peak < baseline + 60, (baseline, rss.peak)
    assert after < baseline + 30, (baseline, after)
    assert c.predict(*gen_args(name, "Once "), api_name="/generate").startswith("Once ")  # still serving


def test_a_prompt_whose_attention_would_take_gigabytes_is_refused_first(app, tmp_path):
    """A small ALiBi model with many heads and a long context passes every size cap, but a long prompt makes
    (1, heads, T, T) bias masks: 2,000 bytes at 64 heads is about 2 GiB. /generate and /next_tokens refuse it
    before the model runs, naming the longest prompt that fits; the app's peak RSS does not move."""
    import torch

    from slm_blocks import ModelSpec, build_model
    from slm_blocks.sharing.export import export_hf
    from slm_blocks.training.tokenization import build_tokenizer

    tok = build_tokenizer("byte")
    spec = ModelSpec.from_dict({"vocab_size": len(tok), "d_model": 32, "max_seq_len": 2048, "blocks": [
        {"type": "embedding"}, {"type": "positional", "kind": "alibi"},
        {"type": "transformer", "attention": {"n_heads": 64, "head_dim": 2}, "mlp": {"hidden": 64}},
        {"type": "final_norm"}, {"type": "lm_head"}]})
    torch.manual_seed(0)
    export_hf(build_model(spec), tok, tmp_path / "alibi", verify=False)
    c = client(app)
    name = import_model(c, tmp_path / "alibi")
    prompt = "x" * PROMPT_CAP
    baseline = trimmed_rss()
    with PeakRSS() as rss:
        out = c.predict(*gen_args(name, prompt), api_name="/generate")
        df, msg = c.predict(name, prompt, api_name="/next_tokens")
    assert out.startswith("⚠️ Prompt: 2,000 tokens would need about") and "use at most" in out, out
    assert not df["data"] and msg.startswith("⚠️ Prompt: 2,000 tokens") and "use at most" in msg, msg
    assert rss.peak < baseline + 60, (baseline, rss.peak)
    most = int(msg.split("use at most ")[1].split(" ")[0].replace(",", ""))
    assert 100 < most < 2000
    df, msg = c.predict(name, prompt[:most], api_name="/next_tokens")  # the length it names does fit
    assert df["data"] and not msg, msg
    fig, msg = c.predict(name, prompt, 0, 0, api_name="/attention_map")  # the map shows the first 48 tokens only
    assert fig is not None and not msg, msg


def test_one_session_cannot_take_every_inspect_worker(app, model_folder, monkeypatch):
    """/next_tokens had one worker for everybody: six slow calls from one session kept another session waiting
    for all of them. Now one session has at most two in the queue (the rest are refused at the door, 429) and runs
    one at a time (the second is answered at once), and the inspect views have a worker per core."""
    import slm_blocks.ui.handlers as handlers

    real = handlers.next_token_distribution

    def slow(*args, **kwargs):
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(handlers, "next_token_distribution", slow)
    hostile, victim = client(app), client(app)
    theirs, mine = import_model(hostile, model_folder), import_model(victim, model_folder)
    jobs = [hostile.submit(theirs, "Once ", api_name="/next_tokens") for _ in range(6)]
    time.sleep(0.3)
    t0 = time.time()
    df, msg = victim.predict(mine, "Once ", api_name="/next_tokens")
    waited = time.time() - t0
    results = []
    for j in jobs:
        try:
            results.append(j.result(timeout=60))
        except Exception as e:  # refused at the door: the session has two of this kind in flight already
            results.append(({"data": []}, f"refused: {e}"))
    busy = [m for _, m in results if "still running" in m or m.startswith("refused")]
    assert df["data"] and not msg, msg
    assert waited < 4.5, f"another session waited {waited:.1f} s behind one session's calls"
    assert len(busy) >= 4 and sum(1 for d, m in results if d["data"]) >= 1, [m for _, m in results]


def test_a_session_cannot_fill_the_shared_queue():
    """Gradio's queue (shared by everyone): a session's events beyond the cap are refused at the door."""
    import asyncio

    from slm_blocks.ui.guard import cap_session_events

    class Queue:
        def __init__(self):
            self.event_ids_to_events = {}

        async def push(self, body, request, username):
            key = str(len(self.event_ids_to_events))
            self.event_ids_to_events[key] = SimpleNamespace(session_hash=body.session_hash)
            return True, "id", "success"

    demo = SimpleNamespace(_queue=Queue())
    cap_session_events(demo, 3)
    push = demo._queue.push
    got = [asyncio.run(push(SimpleNamespace(session_hash="greedy"), None, None)) for _ in range(5)]
    assert [ok for ok, *_ in got] == [True, True, True, False, False] and "at most 3" in got[-1][1]
    assert asyncio.run(push(SimpleNamespace(session_hash="other"), None, None))[0]


def test_a_session_holds_at_most_two_events_of_one_kind():
    """Cheap calls run at once, side by side: 16 of one session's /validate_spec would share the interpreter 16:1
    with another visitor's single call, so one session may have only two of one kind waiting or running."""
    import asyncio

    from slm_blocks.ui.guard import cap_session_events

    class Queue:
        def __init__(self):
            self.event_ids_to_events = {}

        async def push(self, body, request, username):
            key = str(len(self.event_ids_to_events))
            self.event_ids_to_events[key] = SimpleNamespace(session_hash=body.session_hash,
                                                            fn=SimpleNamespace(_id=body.fn_index))
            return True, key, "success"

    demo = SimpleNamespace(_queue=Queue())
    cap_session_events(demo, 16)
    push = demo._queue.push
    same = [asyncio.run(push(SimpleNamespace(session_hash="s", fn_index=7), None, None))[0] for _ in range(3)]
    assert same == [True, True, False]
    assert asyncio.run(push(SimpleNamespace(session_hash="s", fn_index=8), None, None))[0]  # another kind
    assert asyncio.run(push(SimpleNamespace(session_hash="t", fn_index=7), None, None))[0]  # another session


def test_an_event_of_a_redrawn_widget_is_refused_not_a_server_error(app):
    """A click on a widget that a redraw (the Build tab's gr.render) has just replaced names an fn_index that no
    longer exists: a 400 with a message, not a 500 with a traceback in the log."""
    import httpx

    r = httpx.post(f"{app.url}gradio_api/queue/join", json={"data": [], "fn_index": 10**7, "session_hash": "x1"},
                   timeout=30)
    assert r.status_code == 400 and "redrawn" in r.text, (r.status_code, r.text)


# ----------------------------------------------------------------------------- 2. Hub ids never read the server's disk


def test_a_hub_id_never_loads_a_folder_of_the_server(app, tmp_path, monkeypatch):
    """'owner/name' relative to the app's working directory named a folder the app process would read (the
    preview builds the tokenizer in the app itself)."""
    from slm_blocks.training.tokenization import build_tokenizer, save_tokenizer

    monkeypatch.chdir(tmp_path)
    save_tokenizer(build_tokenizer("byte"), tmp_path / "someone" / "tok")
    c = client(app)
    job = app_job("p", 100)
    job["tokenizer"] = {"kind": "pretrained", "name_or_path": "someone/tok"}
    text = html.unescape(c.predict(job, None, api_name="/preview"))
    assert "Pretrained tokenizer" in text and "not a Hub id" in text and "vocabulary" not in text, text
    job["data"] = {"source": "hub", "hub_id": "someone/tok"}
    job["tokenizer"] = {"kind": "char"}
    text = html.unescape(c.predict(job, None, api_name="/preview"))
    assert "Hub dataset id" in text and "not a Hub id" in text, text


# ----------------------------------------------------------------------------- 4. the server's token is never used


@pytest.mark.parametrize("setting, space, given, used", [
    ("", False, "", None),  # nothing given, no opt-in: refused, whatever the server holds
    ("", True, "", None),
    ("1", True, "", None),  # opted in, but on Spaces: refused
    ("1", False, "", "hf_SERVER"),  # a local owner opted in
    ("", False, "  hf_PASTED  ", "hf_PASTED"),
    ("", True, "oauth", "hf_OAUTH"),
])
def test_push_never_uses_the_servers_token_unless_a_local_owner_opts_in(tmp_path, monkeypatch, setting, space,
                                                                        given, used):
    import huggingface_hub

    import slm_blocks.sharing.hub as hub
    from slm_blocks.ui.handlers import Handlers
    from slm_blocks.ui.state import Limits, SessionStore

    monkeypatch.setenv("HF_TOKEN", "hf_SERVER")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_SERVER")
    monkeypatch.setenv("SLM_ALLOW_LOCAL_TOKEN", setting)
    monkeypatch.setenv("SPACE_ID", "someone/space") if space else monkeypatch.delenv("SPACE_ID", raising=False)
    calls = []
    monkeypatch.setattr(hub, "push_to_hub", lambda folder, repo, token, private=True: calls.append(token) or
                        SimpleNamespace(repo_id=repo, private=private, url="https://hf.co/x"))
    store = SessionStore(dataclasses.replace(Limits.from_env(), data_dir=tmp_path))  # SLM_* as set above
    request = SimpleNamespace(session_hash="pusher")
    store.get("pusher").exports["run"] = tmp_path
    oauth = SimpleNamespace(token="hf_OAUTH") if given == "oauth" else None
    msg = html.unescape(Handlers(store).push("run", "me/model", "" if given == "oauth" else given, True, oauth,
                                             request))
    assert calls == ([used] if used else []), (msg, calls)
    if used is None:
        assert msg.startswith("❌") and "Token" in msg and "server's own token" in msg, msg
    assert "hf_SERVER" not in msg


# ----------------------------------------------------------------------------- 5. imports


def test_imports_go_through_the_caps_show_no_path_and_leave_no_files(app, model_folder, tmp_path):
    from gradio_client import handle_file

    c = client(app)
    session = app.store.get(c.session_hash)

    def upload(folder: Path):
        return c.predict([handle_file(str(p)) for p in sorted(folder.iterdir()) if p.is_file()],
                         api_name="/import_model")[0]

    assert upload(model_folder).startswith("✅")  # the app's own export imports
    kept = set((session.root / "imports").iterdir())
    spec = json.loads((model_folder / "slm_spec.json").read_text())
    attacks = {}
    big = dict(spec, d_model=1024, blocks=[dict(b, repeat=8) if b["type"] == "transformer" else b
                                           for b in spec["blocks"]])
    attacks["huge slm_spec.json"] = ("slm_spec.json", json.dumps(big), "too big for this app")
    attacks["huge context"] = ("slm_spec.json", json.dumps(dict(spec, max_seq_len=1 << 20)), "context")
    attacks["garbage weights"] = ("model.safetensors", "\x00" * 64, "not a valid safetensors file")
    for what, (file, content, words) in attacks.items():
        folder = tmp_path / what.replace(" ", "-")
        folder.mkdir()
        for p in model_folder.iterdir():
            if p.is_file():
                (folder / p.name).write_bytes(p.read_bytes())
        (folder / file).write_text(content)
        msg = html.unescape(upload(folder))
        assert msg.startswith("❌") and words in msg, (what, msg)
        assert str(app.data_dir) not in msg and "/tmp" not in msg and "sessions" not in msg, (what, msg)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00" * 100)
    msg = html.unescape(c.predict(handle_file(str(gguf)), api_name="/import_gguf")[0])
    assert msg.startswith("❌") and "/tmp" not in msg and str(app.data_dir) not in msg, msg
    assert set((session.root / "imports").iterdir()) == kept, "a failed import left files"


# ----------------------------------------------------------------------------- 6. disk and queue hygiene


def _mlflow_run_with_artifact(uri: str, name: str) -> tuple[str, Path]:
    from mlflow.tracking import MlflowClient

    from slm_blocks.training.tracking import EXPERIMENT, _experiment_id

    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(_experiment_id(client, uri, EXPERIMENT), run_name=name)
    client.log_text(run.info.run_id, "x" * 1000, "checkpoint/model.safetensors")
    path = Path(client.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://"))
    assert (path / "checkpoint" / "model.safetensors").is_file()
    return run.info.run_id, path


def _owns_run(root: Path, run_id: str) -> None:
    (root / "runs" / "r").mkdir(parents=True, exist_ok=True)
    (root / "runs" / "r" / "run.json").write_text(json.dumps({"mlflow_run_id": run_id}))


def test_idle_rest_sessions_and_orphans_are_swept_with_their_artifacts(app):
    """A REST session (no heartbeat) idle past SLM_SESSION_IDLE is closed; a browser-like client with an open
    heartbeat is not; a folder no live session owns (a crashed process's) goes too; MLflow artifacts of their
    runs are deleted, their metrics stay."""
    store = app.store
    status, text = raw_call(app.url, "stop", json.dumps({"data": [], "session_hash": "rest-client-1"}))
    assert status == 200 and "Nothing is training" in text
    rest = store.sessions["rest-client-1"]
    live = client(app)
    live.predict(api_name="/stop")
    live_session = store.sessions[live.session_hash]
    end = time.time() + 30
    while not store.liveness.is_open(live.session_hash) and time.time() < end:
        time.sleep(0.1)
    assert store.liveness.is_open(live.session_hash), "the client's heartbeat was not seen"
    rest_run, rest_art = _mlflow_run_with_artifact(store.mlflow_uri, "rest")
    _owns_run(rest.root, rest_run)
    orphan = store.limits.data_dir / "sessions" / "crashed-process-session"
    orphan_run, orphan_art = _mlflow_run_with_artifact(store.mlflow_uri, "orphan")
    _owns_run(orphan, orphan_run)
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (orphan / ".owner").write_text(dead.stdout.strip())  # its process is gone
    other = store.limits.data_dir / "sessions" / "another-live-app-session"
    other.mkdir(parents=True)
    (other / ".owner").write_text(str(os.getppid()))  # a second app on the same data folder, still running

    done = store.sweeper.sweep(now=time.time() + store.limits.session_idle_s + 5)
    assert "rest-client-1" in done["closed"] and live_session.id not in done["closed"], done
    # (the app's own sweeper runs every 30 s too and may have taken the orphan first)
    end = time.time() + 30
    while (rest.root.exists() or rest_art.exists()) and time.time() < end:
        time.sleep(0.1)
    assert not rest.root.exists() and not orphan.exists() and live_session.root.exists() and other.exists()
    assert not rest_art.exists() and not orphan_art.exists(), "MLflow artifacts of swept runs are left"
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri=store.mlflow_uri).get_run(rest_run).info.run_id == rest_run  # metrics stay


def test_the_disk_budget_refuses_new_work(tmp_path):
    from slm_blocks.ui.handlers import Handlers
    from slm_blocks.ui.state import Limits, SessionStore

    store = SessionStore(Limits(data_dir=tmp_path, disk_budget_mb=1))
    other = store.get("someone-else")
    (other.root / "uploads").mkdir(parents=True)
    (other.root / "uploads" / "big.txt").write_bytes(b"x" * (2 * 2**20))
    request = SimpleNamespace(session_hash="newcomer")
    status = next(Handlers(store).train(app_job("r", 10), None, None, request))[0]
    assert "disk budget" in status and not store.get("newcomer").runs, status
    msg, _ = Handlers(store).import_folder([str(other.root / "uploads" / "big.txt")], request)
    assert "disk budget" in msg and not (store.get("newcomer").root / "imports").exists(), msg


# ----------------------------------------------------------------------------- 7. races and edges


def test_number_fields_markdown_and_huge_values(app, model_folder, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    c = client(app)
    name = import_model(c, model_folder)
    sid = json.dumps(c.session_hash)
    for layer, head, field in [('"abc"', "0", "Attention layer"), ("[1]", "0", "Attention layer"),
                               ("1e400", "0", "Attention layer"), ("0", '"x"', "Head"), ("0", "1.5", "Head"),
                               (json.dumps("Q" * 50_000), "0", "Attention layer")]:
        body = f'{{"data": [{json.dumps(name)}, "Once ", {layer}, {head}], "session_hash": {sid}}}'
        status, msg = raw_call(app.url, "attention_map", body)
        assert status == 200 and msg.startswith("⚠️") and field in msg and len(msg) < 300, (layer, head, msg)
    body = f'{{"data": [{json.dumps(name)}, "Once ", 8, 0.8, Infinity, 1.0, 1.0, "1", "fp32"], "session_hash": {sid}}}'
    status, out = raw_call(app.url, "generate", body)
    assert status == 200 and out.startswith("⚠️ Top-k") and "finite" in out, out
    # a key the caller sent reaches the status Markdown without a way out of its code span
    job = app_job("m", 10)
    job["train"]["x`<img src=x onerror=alert(1)>[link](http://evil)"] = 1
    status = c.predict(job, None, api_name="/train")[0]
    assert status.startswith("❌") and "<img" not in status and "`<" not in status, status
    out, err = capfd.readouterr()
    assert "Q" * 1000 not in out + err
    assert not [r for r in caplog.records if "Q" * 1000 in r.getMessage()]


def test_the_readme_lists_every_cap_with_its_variable():
    import inspect
    import re

    from slm_blocks.ui.state import Limits

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Security and limits"):]
    section = section[:section.index("\n## ", 3)]
    names = set(re.findall(r"SLM_[A-Z_]+", inspect.getsource(Limits.from_env) + (root / "app.py").read_text()))
    names -= {"SLM_DATA_DIR"}  # where, not how much
    assert names and not [n for n in sorted(names) if f"`{n}`" not in section], names


def test_the_build_estimate_says_which_vocabulary_it_counts():
    """Build counts the spec's vocab_size; training uses the tokenizer's (issue 10, item 3): the estimate says so."""
    from slm_blocks import load_preset
    from slm_blocks.ui.build_tab import validate_spec

    estimate = validate_spec(load_preset("gpt2").to_json())[1]
    assert "vocabulary 4,096 tokens" in estimate and "Train tab" in estimate, estimate


def test_a_queued_training_between_turns_is_not_number_zero_in_line():
    """Between leaving the line and its worker starting (or going back in line after a fair-share turn) a
    training is queued but in no place: the status says a trainer is being readied, not "number 0"."""
    from slm_blocks.ui.train_tab import queue_line

    assert "number" not in queue_line(0, (None, False)) and "trainer" in queue_line(0, (None, False))
    assert "number **2** in line" in queue_line(2, (30.0, False))


# ----------------------------------------------------------------------------- per-client caps behind a proxy


@pytest.mark.parametrize("space, proxies, forwarded, peer, expected", [
    ("user/space", None, "6.6.6.6, 7.7.7.7, 10.1.2.3", "10.0.0.1", "10.1.2.3"),  # Spaces: the proxy's entry
    ("user/space", None, "10.1.2.3", "10.0.0.1", "10.1.2.3"),
    ("user/space", None, None, "10.0.0.1", "10.0.0.1"),
    (None, None, "6.6.6.6", "10.0.0.1", "10.0.0.1"),  # no proxy: the header is the client's own words
    (None, "2", "6.6.6.6, 10.1.2.3, 172.16.0.9", "10.0.0.1", "10.1.2.3"),  # two proxies: the outer one's entry
])
def test_the_client_address_is_the_one_the_proxy_appended(monkeypatch, space, proxies, forwarded, peer, expected):
    from slm_blocks.ui.guard import client_address

    for name, value in (("SPACE_ID", space), ("SLM_TRUSTED_PROXIES", proxies)):
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    request = SimpleNamespace(headers={"x-forwarded-for": forwarded} if forwarded else {},
                              client=SimpleNamespace(host=peer))
    assert client_address(request) == expected


def test_made_up_forwarded_entries_do_not_buy_more_training_slots(monkeypatch):
    """Three requests from one visitor with three different made-up first X-Forwarded-For entries are one
    client for the per-client training cap."""
    from slm_blocks.training.jobs import QueueFull, QueuedTraining, TrainingQueue
    from slm_blocks.ui.guard import client_address

    monkeypatch.setenv("SPACE_ID", "user/space")
    queue = TrainingQueue(1, max_waiting=10, per_client=2)
    monkeypatch.setattr(queue, "_dispatch", lambda: None)  # nothing starts: every entry stays in line
    outcomes = []
    for fake in ("1.1.1.1", "2.2.2.2", "3.3.3.3"):
        entry = QueuedTraining(None, Path("/nonexistent") / fake, resume=True)
        entry.client = client_address(SimpleNamespace(headers={"x-forwarded-for": f"{fake}, 10.9.9.9"},
                                                      client=SimpleNamespace(host="10.0.0.1")))
        try:
            queue.submit(entry)
            outcomes.append("queued")
        except QueueFull:
            outcomes.append("refused")
    assert outcomes == ["queued", "queued", "refused"], outcomes
