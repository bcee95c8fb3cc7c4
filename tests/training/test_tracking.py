"""MLflow tracking: params, metric histories, artifacts, status, run tables, secrets redacted, resume reuses the run."""

import threading

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from slm_blocks.training.run import open_run
from slm_blocks.training.tracking import Tracker, flatten, metric_history, runs_table, tracking_uri
from slm_blocks.training.loop import EvalEvent, StepEvent, train

pytestmark = pytest.mark.usefixtures("one_thread")


def track(run, uri, stop=None, on_step=None):
    tracker = Tracker(run, uri=uri)
    events = []
    for ev in train(run, stop=stop):
        tracker.on_event(ev)
        events.append(ev)
        if on_step and isinstance(ev, StepEvent):
            on_step(ev)
    return tracker, events


def artifact_paths(client, run_id, path=None) -> set[str]:
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def test_a_tracked_run(make_run, mlflow_uri):
    run = make_run("tracked", max_steps=8, log_every=1, eval_every=4, sample_tokens=10)
    tracker, events = track(run, mlflow_uri)
    client = MlflowClient(tracking_uri=mlflow_uri)
    r = client.get_run(tracker.run_id)
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "tracked"
    assert r.data.tags["slm.end_reason"] == "max_steps"
    assert r.data.tags["slm.tokenizer"] == "char"

    p = r.data.params
    assert p["spec.d_model"] == "32" and p["spec.vocab_size"] == str(run.spec.vocab_size)
    assert p["spec.blocks.2.attention.n_heads"] == "2"
    assert p["train.max_steps"] == "8" and p["train.lr"] == "0.001"
    assert p["data.source"] == "files" and p["tokenizer.kind"] == "char"
    assert int(p["model.params"]) > 0

    hist = client.get_metric_history(tracker.run_id, "train_loss")
    assert sorted(m.step for m in hist) == list(range(1, 9))
    losses = {s.step: s.loss for s in events if isinstance(s, StepEvent)}
    assert all(m.value == pytest.approx(losses[m.step]) for m in hist)
    evals = [e for e in events if isinstance(e, EvalEvent)]
    for key in ("val_loss", "bits_per_char", "perplexity"):
        h = client.get_metric_history(tracker.run_id, key)
        assert sorted(m.step for m in h) == [4, 8], key
    assert r.data.metrics["val_loss"] == pytest.approx(evals[-1].val_loss)
    assert "accuracy" not in r.data.metrics  # None for a text corpus: not logged

    arts = artifact_paths(client, tracker.run_id)
    assert "spec.json" in arts
    assert {"samples/step-000004.txt", "samples/step-000008.txt"} <= arts
    assert {"checkpoint/model.safetensors", "checkpoint/trainer_state.json"} <= arts

    assert open_run(run.dir, load_data=False).meta["mlflow_run_id"] == tracker.run_id

    table = runs_table(mlflow_uri)
    assert isinstance(table, pd.DataFrame)
    row = table[table.run_id == tracker.run_id]
    assert len(row) == 1
    row = row.iloc[0]
    assert row.status == "FINISHED" and row.run_name == "tracked"
    assert row["params.spec.d_model"] == "32"
    assert row["metrics.val_loss"] == pytest.approx(evals[-1].val_loss)

    long = metric_history(mlflow_uri, [tracker.run_id], "train_loss")
    assert list(long.columns) == ["run_id", "step", "value", "timestamp"]
    assert len(long) == 8 and set(long.run_id) == {tracker.run_id}
    assert sorted(long.step) == list(range(1, 9))
    assert metric_history(mlflow_uri, [tracker.run_id], "no_such_metric").empty


def test_resumed_run_reuses_the_mlflow_run(make_run, mlflow_uri):
    run = make_run("resumed", max_steps=10, log_every=1, eval_every=5)
    stop = threading.Event()
    first, _ = track(run, mlflow_uri, stop=stop, on_step=lambda ev: ev.step == 4 and stop.set())
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert client.get_run(first.run_id).info.status == "KILLED"
    assert client.get_run(first.run_id).data.tags["slm.end_reason"] == "stopped"

    second, _ = track(open_run(run.dir), mlflow_uri)
    assert second.run_id == first.run_id
    r = client.get_run(first.run_id)
    assert r.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(first.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 11))  # one entry per step, no gaps and no duplicates
    names = [x.info.run_name for x in client.search_runs([r.info.experiment_id])]
    assert names.count("resumed") == 1


def test_failed_run_is_marked(make_run, mlflow_uri):
    run = make_run("failing", max_steps=3)
    tracker = Tracker(run, uri=mlflow_uri)
    tracker.fail("RuntimeError: boom")
    r = MlflowClient(tracking_uri=mlflow_uri).get_run(tracker.run_id)
    assert r.info.status == "FAILED" and r.data.tags["slm.error"] == "RuntimeError: boom"


def test_secrets_are_redacted():
    flat = flatten({"hf_token": "hf_canary123", "data": {"hub": {"token": "hf_canary456", "HF_TOKEN": "x1"}},
                    "api_key": "k", "apiKey": "k2", "password": "pw", "client-secret": "s", "auth": "a",
                    "tokenizer": {"kind": "char"}, "max_tokens": 5, "sample_tokens": 7})
    assert flat["hf_token"] == "***"
    assert flat["data.hub.token"] == "***" and flat["data.hub.HF_TOKEN"] == "***"
    assert flat["api_key"] == flat["apiKey"] == flat["password"] == flat["client-secret"] == flat["auth"] == "***"
    assert "canary" not in repr(flat)
    # names that merely contain "token" are ordinary settings
    assert flat["tokenizer.kind"] == "char" and flat["max_tokens"] == "5" and flat["sample_tokens"] == "7"


def test_flatten_nesting_and_truncation():
    flat = flatten({"a": {"b": 1, "c": [10, {"d": None}]}, "e": [], "f": {}, "g": "x" * 2000})
    assert flat == {"a.b": "1", "a.c.0": "10", "a.c.1.d": "None", "e": "[]", "f": "{}", "g": "x" * 500}


def test_tracking_uri_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri(tmp_path) == "http://mlflow.example:5000"


def test_runs_table_of_a_missing_experiment_is_empty(mlflow_uri):
    assert runs_table(mlflow_uri, experiment="never-created").empty


def test_compound_secret_names_are_redacted():
    """Keys that are secrets by name but do not end in exactly token/secret/... must not leak either."""
    flat = flatten({"secret_key": "s1", "aws_secret_access_key": "s2", "private_key": "s3"})
    assert set(flat.values()) == {"***"}, f"secret-named params logged in clear text: {flat}"
