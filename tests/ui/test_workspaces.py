"""A learner's work lives in a workspace, not a tab (ui/workspace.py): in local mode it survives an app restart
(a stopped run resumes, a run trained by the CLI is listed from --runs and exports) and an app killed mid-training
leaves its run "interrupted" and resumable; in shared mode a page's workspace is bound by its load event, no
session hash a client picks opens one, its secret is written nowhere, and an anonymous workspace unused past
its time to live is swept while a signed-in one stays."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app_process import app_process, wait_until
from conftest import app_job, running_app, small_spec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ROOT = Path(__file__).resolve().parents[2]
SPEC = small_spec(seq=32, d_model=32, layers=1).to_json()


def job(name: str, steps: int, **train) -> dict:
    return app_job(name, steps, spec=SPEC, batch_size=2, eval_every=5, checkpoint_every=5, **train)


def runs_of(c) -> dict[str, str]:
    """{run: status word} as Compare lists this client's runs."""
    table = c.predict(False, "step", "loss", api_name="/compare")[0]
    return {row[0]: row[-1] for row in table["data"]}


def cli_run(runs: Path, name: str) -> Path:
    """A run trained by `python -m slm_blocks train` (3 steps) into runs/<name>."""
    spec_file = runs.parent / "spec.json"
    spec_file.write_text(SPEC)
    subprocess.run([sys.executable, "-m", "slm_blocks", "train", "--spec", str(spec_file), "--max-steps", "3",
                    "--batch-size", "2", "--eval-every", "3", "--out", str(runs / name), "--no-mlflow"], check=True,
                   cwd=ROOT, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return runs / name


def test_local_workspace_survives_a_restart_and_lists_cli_runs(tmp_path, monkeypatch):
    from gradio_client import Client

    from slm_blocks.ui.state import Limits, SessionStore

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cli_runs = tmp_path / "cli-runs"
    cli_run(cli_runs, "from-cli")
    limits = Limits(data_dir=tmp_path / "data", mode="local", run_dirs=(cli_runs,), max_time_s=300)

    store = SessionStore(limits)
    with running_app(store) as (_, url):
        c = Client(url, verbose=False)
        assert "Done" in c.predict(job("short", 3), None, api_name="/train")[0]
        stream = c.submit(job("long", 40), None, api_name="/train")
        session = store.get(None)
        wait_until(lambda: session.runs.get("long") and session.runs["long"].job.events and
                   (session.runs["long"].dir / "checkpoints").is_dir(), 120, "the long run's first checkpoint")
        assert "Stopping" in c.predict(api_name="/stop")
        wait_until(lambda: stream.done(), 120, "the stopped run's stream to end")
        listed = runs_of(c)
        assert listed["short"] == "done" and listed["long"] == "stopped" and listed["from-cli"] == "done", listed
        refused = c.predict("from-cli", 0, api_name="/resume")[0]
        assert "read only" in refused and "--runs" in refused, refused

    again = SessionStore(limits)  # the app restarted on the same data folder
    with running_app(again) as (_, url):
        c = Client(url, verbose=False)  # another client: local mode has one workspace
        assert runs_of(c) == listed
        msg = c.predict("from-cli", api_name="/export")[1]
        assert "Exported" in msg, msg
        status = list(c.submit("long", 0, api_name="/resume"))[-1][0]
        assert "Done" in status, status
        assert runs_of(c)["long"] == "done"
        assert (cli_runs / "from-cli" / "run.json").is_file()  # read, never moved or deleted


def test_an_app_killed_mid_training_lists_its_run_as_interrupted_and_resumes_it(tmp_path):
    import psutil
    from gradio_client import Client

    with app_process(tmp_path, env={"SLM_MODE": "local"}) as app:
        c = Client(app.url, verbose=False)
        c.submit(job("crashed", 30, max_time=600), None, api_name="/train")
        run_dir = app.data_dir / "workspaces" / "local" / "runs" / "crashed"
        wait_until(lambda: (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()), 180,
                   "a checkpoint of the run")
        for p in [*psutil.Process(app.pid).children(recursive=True), psutil.Process(app.pid)]:
            p.kill()  # the machine goes down: the app and its training worker at once
        app.proc.wait(30)

    with app_process(tmp_path, env={"SLM_MODE": "local"}) as app:
        c = Client(app.url, verbose=False)
        assert runs_of(c) == {"crashed": "interrupted"}
        status = list(c.submit("crashed", 0, api_name="/resume"))[-1][0]
        assert "Done" in status, status
        assert runs_of(c) == {"crashed": "done"}


@pytest.fixture
def shared(tmp_path, monkeypatch):
    from slm_blocks.ui.state import Limits, SessionStore

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    store = SessionStore(Limits(data_dir=tmp_path / "data", mode="shared", max_time_s=300))
    with running_app(store) as (_, url):
        yield store, url


def test_no_session_hash_a_client_picks_opens_a_workspace(shared):
    """A page bound to a workspace (as its load event does) trains there; clients whose session hash is the
    workspace's key, its folder name or the page's own hash after it let go see none of it."""
    from gradio_client import Client

    from slm_blocks.ui.workspace import anonymous_key, new_secret

    store, url = shared
    key = anonymous_key(new_secret())
    owner = Client(url, verbose=False)
    store.bind(owner.session_hash, key)
    assert "Done" in owner.predict(job("mine", 3), None, api_name="/train")[0]
    assert runs_of(owner) == {"mine": "done"}
    for guess in (key, key.removeprefix("ws."), "local", "ws-" + key[3:]):
        thief = Client(url, verbose=False)
        thief.session_hash = guess
        assert runs_of(thief) == {}, guess
        text = thief.predict("mine", "Once ", 4, 0.8, 50, 1.0, 1.0, "1", api_name="/generate")
        assert "pick one of this session's runs" in text, text
        assert "❌" in thief.predict("mine", api_name="/export")[1]
    store.close(owner.session_hash)  # the page closed: its hash no longer opens the workspace ...
    assert runs_of(owner) == {}
    assert store.open(key).runs["mine"].status == "done"  # ... which is kept, with its run


def test_the_secret_is_written_nowhere(tmp_path, monkeypatch, caplog):
    """The browser's secret names its workspace only through a hash: not a folder, a file, a log line."""
    import logging

    from slm_blocks.ui import workspace_view
    from slm_blocks.ui.state import Limits, SessionStore

    secret = "5ec7e7" * 10 + "abcd"
    monkeypatch.setattr(workspace_view, "new_secret", lambda: secret)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    store = SessionStore(Limits(data_dir=tmp_path / "data", mode="shared", max_time_s=300))
    actions = workspace_view.WorkspaceActions(store)

    class Request:
        session_hash = "page-1"

    caplog.set_level(logging.DEBUG)
    stored, line, _ = actions.bind(None, Request())
    assert stored == secret and secret not in line
    with running_app(store) as (_, url):
        from gradio_client import Client

        c = Client(url, verbose=False)
        store.bind(c.session_hash, store.resolve("page-1"))
        assert "Done" in c.predict(job("r", 3), None, api_name="/train")[0]
    assert secret not in caplog.text
    for path in (tmp_path / "data").rglob("*"):
        assert secret not in str(path)
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert secret.encode() not in path.read_bytes(), path


def test_anonymous_workspaces_expire_signed_in_and_local_ones_stay(tmp_path):
    from slm_blocks.ui.state import Limits, SessionStore
    from slm_blocks.ui.sweeper import Sweeper
    from slm_blocks.ui.workspace import LAST_SEEN, anonymous_key, folder, new_secret, user_key

    store = SessionStore(Limits(data_dir=tmp_path, mode="shared", workspace_ttl_s=3600))
    old, fresh, user = anonymous_key(new_secret()), anonymous_key(new_secret()), user_key("Ada")
    for key in (old, fresh, user):
        store.bind(f"page-{key}", key)
        (store.open(key).root / "runs" / "r").mkdir(parents=True)
        store.close(f"page-{key}")
        store.unload(key)
    long_ago = time.time() - 2 * 3600
    for key in (old, user):
        os.utime(folder(tmp_path, key) / LAST_SEEN, (long_ago, long_ago))
    sweeper = Sweeper(store)  # one pass at a time, run here (no background thread racing it)
    done = sweeper.sweep()
    assert done["expired"] == [old.removeprefix("ws.")]
    assert not folder(tmp_path, old).exists()
    assert (folder(tmp_path, fresh) / "runs" / "r").is_dir() and (folder(tmp_path, user) / "runs" / "r").is_dir()

    # a page that went away without its unload (a crashed browser) lets go of its workspace once it is idle
    ghost = anonymous_key(new_secret())
    store.bind("crashed-page", ghost).last_seen = time.time() - 2 * store.limits.session_idle_s
    sweeper.sweep()
    assert "crashed-page" not in store.bindings and ghost not in store.sessions
    assert folder(tmp_path, ghost).is_dir()  # kept until its time to live passes

    local = SessionStore(Limits(data_dir=tmp_path / "local", mode="local", workspace_ttl_s=1))
    root = local.get(None).root
    os.utime(root / LAST_SEEN, (long_ago, long_ago))
    local.unload(local.resolve(None))
    assert Sweeper(local).sweep()["expired"] == [] and root.is_dir()


def test_signing_in_offers_to_adopt_the_anonymous_workspaces_runs(tmp_path):
    from types import SimpleNamespace

    from slm_blocks.ui import workspace_view
    from slm_blocks.ui.state import Limits, SessionStore
    from slm_blocks.ui.workspace import anonymous_key, user_key

    store = SessionStore(Limits(data_dir=tmp_path, mode="shared"))
    actions = workspace_view.WorkspaceActions(store)
    page = SimpleNamespace(session_hash="page")
    secret, _, offer = actions.bind(None, page)  # anonymous: two runs trained
    assert not offer["visible"]
    anon = store.open(anonymous_key(secret))
    for name in ("first", "shared-name"):
        (anon.root / "runs" / name).mkdir(parents=True)
        (anon.root / "runs" / name / "run.json").write_text("{}")
    ada = SimpleNamespace(username="Ada")
    mine = store.open(user_key("Ada"))
    (mine.root / "runs" / "shared-name").mkdir(parents=True)
    (mine.root / "runs" / "shared-name" / "run.json").write_text("{}")
    store.unload(mine.id)

    _, line, offer = actions.bind(secret, page, ada)  # signed in: the offer
    assert offer["visible"] and "2 runs" in offer["value"] and "Ada's workspace" in line
    line, hidden = actions.adopt(secret, page, ada)
    assert not hidden["visible"] and "first" in line and "shared-name-2" in line
    mine = store.get("page")
    assert sorted(mine.runs) == ["first", "shared-name", "shared-name-2"]
    assert all((r.dir / "run.json").is_file() for r in mine.runs.values())
    gone = tmp_path / "workspaces" / anonymous_key(secret).removeprefix("ws.")
    wait_until(lambda: not gone.exists(), 60, "the anonymous workspace to be deleted")
