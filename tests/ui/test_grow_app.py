"""The Grow tab through the real app server (gradio_client): distill a small student from a trained run, fine-tune
through the Train tab's "Start from", the before/after table and the kd / ce curves; bad inputs come back as
messages naming the field, and create no run. (Prune + heal: test_browser_grow.py.)"""

import html
import json
import shutil

import pytest

from conftest import small_spec
from slm_blocks.ui.state import Limits, SessionRun, SessionStore


def count(shown: str) -> float:
    """'810K' -> 810000.0 (the table shows sizes as a learner reads them)."""
    return float(shown[:-1]) * {"K": 1e3, "M": 1e6}[shown[-1]] if shown[-1] in "KM" else float(shown)


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained_tiny_char, mlflow_uri):
    import os

    from gradio_client import Client

    from conftest import running_app

    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MLFLOW_TRACKING_URI")}
    os.environ.update(OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=mlflow_uri)  # workers: one thread, one store
    store = SessionStore(Limits(data_dir=tmp_path_factory.mktemp("grow-app"), max_time_s=300))
    try:
        with running_app(store) as (demo, url):
            c = Client(url, verbose=False)
            session = store.get(c.session_hash)
            run_dir = session.root / "runs" / "shakespeare"
            shutil.copytree(trained_tiny_char.dir, run_dir)  # as if this session had trained it
            session.runs["shakespeare"] = SessionRun("shakespeare", run_dir)
            yield c, store, session
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def grow(c, technique, source="shakespeare", name="", steps=2, alpha=0.5, temperature=2.0, target=60, drop=0,
         mlp_keep=1.0, heads=0, spec=None):
    spec = (spec or small_spec(seq=64, d_model=32, layers=2)).to_json()
    outs = list(c.submit(technique, source, name, steps, alpha, temperature, target, drop, mlp_keep, heads, spec,
                         api_name="/grow"))
    assert outs, "the stream produced no output"
    return outs[-1]


def rows(df):
    return [dict(zip(df["headers"], r)) for r in df["data"]]


def splits(plot):
    """The splits drawn (every split also has a placeholder row with no loss from the start)."""
    rows = [dict(zip(plot["columns"], r)) for r in plot["data"]]
    return {r["split"] for r in rows if isinstance(r["loss"], (int, float)) and r["loss"] == r["loss"]}


def test_distill_and_fine_tune_from_a_trained_run(served):
    c, store, session = served
    status, curves, log, table = grow(c, "Distill", name="student")
    assert status.startswith("**student**") and "Done" in status, status
    t = rows(table)
    assert [r["model"] for r in t] == ["teacher: shakespeare", "student after 2 steps"], t
    assert count(t[1]["parameters"]) < count(t[0]["parameters"]) and t[0]["speed vs first"] == "1.00×", t
    assert {"kd (teacher)", "ce (data)", "train (total)", "validation"} <= splits(curves)
    record = json.loads((session.runs["student"].dir / "run.json").read_text())
    assert record["teacher"]["source"] == "shakespeare" and record["teacher"]["alpha"] == 0.5

    # the table of any grown run, later
    again, curves, msg = c.predict("student", api_name="/grow_table")
    assert [r["model"] for r in rows(again)] == [r["model"] for r in t] and not msg
    assert "kd (teacher)" in splits(curves)
    # (prune + heal through the app: tests/ui/test_browser_grow.py)

    # the Train tab's "Start from": the same /train job with init_from = a run of this session
    job = {"spec": "tiny-char", "data": {"source": "builtin", "name": "stories"}, "tokenizer": {"kind": "char"},
           "run_name": "tuned", "init_from": "shakespeare",
           "train": {"max_steps": 3, "batch_size": 4, "max_time": 120, "eval_every": 3, "eval_batches": 2}}
    status = list(c.submit(job, None, api_name="/train"))[-1][0]
    assert "Done" in status, status
    record = json.loads((session.runs["tuned"].dir / "run.json").read_text())
    assert record["init_from"]["source"] == "shakespeare" and record["spec"] == json.loads(
        (session.runs["shakespeare"].dir / "run.json").read_text())["spec"]


def test_the_train_preview_describes_the_model_a_fine_tune_starts_from(served):
    """With "Start from" a run, the preview shows that run's architecture, parameters and tokenizer, not the Build
    tab's blocks (here gpt2, which would be several times bigger)."""
    from slm_blocks import estimate, load_preset
    from slm_blocks.model.estimate import human
    from slm_blocks.training.run import open_run

    c, store, session = served
    source = open_run(session.runs["shakespeare"].dir, load_data=False)
    job = {"spec": "gpt2", "data": {"source": "builtin", "name": "stories"}, "init_from": "shakespeare",
           "train": {"max_steps": 100, "batch_size": 4}}
    text = c.predict(job, None, api_name="/preview")
    assert "Fine-tuning shakespeare" in text and f"**{human(estimate(source.spec).params)} parameters**" in text, text
    assert f"{source.tokenizer_config.kind} tokenizer's {source.spec.vocab_size:,}-token vocabulary" in text, text
    assert f"{human(estimate(load_preset('gpt2')).params)} parameters" not in text  # not the Build tab's blocks
    hub = c.predict({**job, "init_from": "someone/model"}, None, api_name="/preview")
    assert "Fine-tuning someone/model" in hub and "when the run starts" in hub, hub  # nothing downloaded for it
    bad = html.unescape(c.predict({**job, "init_from": "nope-run"}, None, api_name="/preview"))
    assert "not one of this session's runs" in bad and "Traceback" not in bad, bad


@pytest.mark.parametrize("args, words", [
    (dict(technique="Prune + heal", drop=9), ["drop_layers", "at least one"]),
    (dict(technique="Prune + heal", heads=5, target=0), ["heads_keep", "only 4 heads"]),
    (dict(technique="Prune + heal", source="someone/model"), ["Source", "finished run of this session"]),
    (dict(technique="Distill", source="someone/model"), ["Teacher", "Hub"]),
    (dict(technique="Fine-tune", source="nope-run"), ["Start from", "not one of this session's runs"]),
    (dict(technique="Fine-tune", steps=0), ["Steps"]),
    (dict(technique="Shrink"), ["Technique"]),
])
def test_bad_grow_inputs_name_the_field_and_create_nothing(served, args, words):
    c, store, session = served
    before = set(session.runs)
    status = html.unescape(grow(c, **args)[0])
    assert status.startswith("❌") and "Traceback" not in status, status
    assert all(w in status for w in words), status
    assert set(session.runs) == before
