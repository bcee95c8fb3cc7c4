"""Whose token reaches the Hub when a visitor types a Hub id. The app runs as `python app.py` with the owner's
HF_TOKEN set (as most Spaces have it) and HF_ENDPOINT pointed at a fake Hub on 127.0.0.1 that records the
Authorization header of every request; the visitor asks for a private dataset, tokenizer, source model and
teacher through /preview and /train (the app process) and a training worker (its own process). The owner's
token must never arrive; an anonymous visitor sends none; a signed-in visitor sends their own."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app_process import app_process, wait_until
from conftest import app_job

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

OWNER = "hf_OwnerCanary0123456789abcdefghijklmnop"
VISITOR = "hf_VisitorCanary0123456789abcdefghijklm"


class FakeHub:
    """Answers every request 404 'repository not found' and keeps (path, Authorization header)."""

    def __init__(self):
        seen = self.seen = []
        lock = self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                with lock:
                    seen.append((self.path, self.headers.get("Authorization")))
                body = json.dumps({"error": "Repository Not Found"}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def requests_for(self, repo: str) -> list:
        with self.lock:
            return [(p, a) for p, a in self.seen if repo in p]

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def hub_app(tmp_path_factory):
    hub = FakeHub()
    env = {"HF_TOKEN": OWNER, "HF_ENDPOINT": hub.url, "SLM_MAX_CONCURRENT_TRAININGS": 2,
           "HF_HUB_ETAG_TIMEOUT": 5, "HF_HUB_DOWNLOAD_TIMEOUT": 5}
    with app_process(tmp_path_factory.mktemp("hub-app"), env, online=True) as app:
        yield app, hub
    hub.close()


def hub_job(name: str, **parts) -> dict:
    job = app_job(name, 5)
    job.update(parts)
    return job


def last_status(client, job) -> str:
    status = ""
    for status, *_ in client.submit(job, None, api_name="/train"):
        pass
    return status


def visitor_calls(client, tag: str) -> None:
    """Every place where a visitor's text becomes a Hub read: preview (data, tokenizer), train (source model,
    teacher, and the worker's data)."""
    client.predict(hub_job(f"p1{tag}", data={"source": "hub", "hub_id": f"someorg/data-{tag}"}), None,
                   api_name="/preview")
    client.predict(hub_job(f"p2{tag}", tokenizer={"kind": "pretrained", "name_or_path": f"someorg/tok-{tag}"}),
                   None, api_name="/preview")
    assert "❌" in last_status(client, hub_job(f"t1{tag}", init_from=f"someorg/model-{tag}"))
    assert "❌" in last_status(client, hub_job(f"t2{tag}", teacher={"source": f"someorg/teacher-{tag}"}))
    last_status(client, hub_job(f"t3{tag}", data={"source": "hub", "hub_id": f"someorg/wdata-{tag}"}))


def test_visitors_hub_reads_never_carry_the_servers_token(hub_app):
    from gradio_client import Client

    app, hub = hub_app
    anonymous = Client(app.url, verbose=False)
    visitor_calls(anonymous, "anon")
    signed_in = Client(app.url, verbose=False, oauth_token=VISITOR)
    visitor_calls(signed_in, "user")
    for tag in ("anon", "user"):  # each place really asked the (fake) Hub, or this test would prove nothing
        for what in ("data", "tok", "model", "teacher", "wdata"):
            wait_until(lambda: hub.requests_for(f"someorg/{what}-{tag}"), 60, f"a Hub request for {what}-{tag}")
    with hub.lock:
        seen = list(hub.seen)
    assert not [s for s in seen if s[1] and OWNER in s[1]], "the server's own token reached the Hub"
    anon = [a for p, a in seen if "-anon" in p]
    assert anon and all(a is None for a in anon), anon
    user = [a for p, a in seen if "-user" in p]
    assert user and all(a == f"Bearer {VISITOR}" for a in user), user
    assert OWNER not in app.output() and VISITOR not in app.output()
    anonymous.close()
    signed_in.close()
