"""Compare tab data: a table of runs, overlaid loss curves and loss vs parameters, as pandas frames.

This session's runs come from their own folders (run.read_history); "everyone's runs" come from the MLflow
store the whole app shares (a class comparing notes), read through tracking.py.
"""

from __future__ import annotations

import json

import pandas as pd

from .. import ModelSpec, estimate
from ..training.run import read_history


def _session_rows(session, x_axis: str):
    table, curves = [], []
    for name, r in session.runs.items():
        record_path = r.dir / "run.json"
        if not record_path.is_file():
            continue
        record = json.loads(record_path.read_text())
        spec = ModelSpec.from_dict(record["spec"])
        history = read_history(r.dir)  # one record per (kind, step): a resume's repeated steps replace the old
        steps = {h["step"]: h for h in history if h["kind"] == "step"}
        evals = [h for h in history if h["kind"] == "eval"]
        last_step = max(steps) if steps else 0
        table.append({"run": name, "architecture": spec.summary(), "parameters": estimate(spec).params,
                      "tokenizer": record["tokenizer"]["kind"], "steps": last_step,
                      "tokens seen": steps[last_step]["tokens_seen"] if steps else 0,
                      "val loss": round(evals[-1]["val_loss"], 4) if evals else None,
                      "bits/char": round(evals[-1]["bits_per_char"], 4) if evals else None,
                      "time (s)": round(steps[last_step]["elapsed_s"], 1) if steps else None,
                      "status": r.job.status if r.job else "done"})

        def x_of(step):
            s = steps.get(step) or (steps[max(k for k in steps if k <= step)] if any(k <= step for k in steps) else None)
            if x_axis == "tokens":
                return s["tokens_seen"] if s else 0
            if x_axis == "time":
                return s["elapsed_s"] if s else 0
            return step

        curves += [{"x": x_of(h["step"]), "loss": h["val_loss"], "run": f"{name} (val)"} for h in evals]
        curves += [{"x": x_of(s), "loss": h["loss"], "run": f"{name} (train)"} for s, h in sorted(steps.items())]
    return table, curves


def _mlflow_rows(uri: str):
    from ..training.tracking import metric_history, runs_table

    df = runs_table(uri)
    if df.empty:
        return [], []
    table, curves = [], []
    for _, row in df.iterrows():
        table.append({"run": row.get("run_name"), "architecture": row.get("tags.slm.architecture"),
                      "parameters": int(row.get("params.model.params") or 0), "tokenizer": row.get("params.tokenizer.kind"),
                      "steps": None, "tokens seen": row.get("metrics.tokens_seen"),
                      "val loss": row.get("metrics.val_loss"), "bits/char": row.get("metrics.bits_per_char"),
                      "time (s)": row.get("metrics.elapsed_s"), "status": row.get("status")})
    ids = list(df["run_id"][:10])
    hist = metric_history(uri, ids, "val_loss")
    names = dict(zip(df["run_id"], df["run_name"]))
    curves = [{"x": h.step, "loss": h.value, "run": f"{names.get(h.run_id)} (val)"} for h in hist.itertuples()]
    return table, curves


def empty_curves(rows=()) -> pd.DataFrame:
    """The curves frame, numeric even when empty (a plot's first frame fixes its axis types)."""
    return pd.DataFrame(list(rows), columns=["x", "loss", "run"]).astype({"x": "float64", "loss": "float64"})


def empty_scatter(rows=()) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=["params", "loss", "run"]).astype({"params": "int64", "loss": "float64"})


def compare_frames(session, mlflow_uri: str | None, x_axis: str = "step"):
    table, curves = _session_rows(session, x_axis) if mlflow_uri is None else _mlflow_rows(mlflow_uri)
    table_df = pd.DataFrame(table)
    curves_df = empty_curves(curves)
    scatter = empty_scatter([{"params": t["parameters"], "loss": t["val loss"], "run": t["run"]} for t in table
                             if t.get("val loss") is not None])
    msg = "" if table else "No runs yet: train one on the Train tab."
    return table_df, curves_df, scatter, msg
