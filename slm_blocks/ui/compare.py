"""Compare tab data: a table of runs, overlaid loss curves, loss vs parameters, and the class board.

This session's runs come from their own folders (run.read_history); "everyone's runs" come from the MLflow
store the whole app shares (a class comparing notes), read through tracking.py. Both give the same rows and the
same curve points: one point per step (the newest after a resume, so no zigzag), x as step, tokens seen or
training time (which a resume continues), y as loss (nats per token) or bits per character, the one measure
that compares runs with different tokenizers.

Curves are drawn as a Vega-Lite chart (gr.Plot): Gradio's LinePlot has one style per colour, while a learner
needs one colour per run with train solid and validation dashed, and point markers so a run with a single eval
still shows up.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from pathlib import Path

import pandas as pd

from .. import ModelSpec, estimate
from ..training.run import read_history

log = logging.getLogger("slm_blocks.app")
Y_AXES = {"loss": "loss (nats per token)", "bits per character": "bits per character"}
CURVE_COLUMNS = ["x", "y", "run", "split"]


def data_label(data: dict | None, name: str | None = None) -> str:
    """Where a run's text came from, in a few words (what the class board groups by)."""
    data = data or {}
    src = data.get("source")
    if src == "builtin":
        return f"builtin:{data.get('name')}"
    if src == "hub":
        return f"hub:{data.get('hub_id')}"
    if src == "files":
        return name or "uploaded files"
    return name or str(src or "?")


# one word per state, the same for a session's own runs (queue states) and everyone's (MLflow's)
STATUS_WORDS = {"done": "done", "finished": "done", "stopped": "stopped", "killed": "stopped", "error": "failed",
                "failed": "failed", "running": "training", "queued": "waiting", "requeue": "waiting",
                "scheduled": "waiting"}


def status_word(status) -> str:
    return STATUS_WORDS.get(str(status or "").lower(), str(status or "").lower())


def learner(run_dir) -> str:
    """A short label for the learner (browser session) a run belongs to, so the class board tells apart two
    learners' runs of the same name: a hash of the session's folder name (never the name itself)."""
    import hashlib

    parts = Path(str(run_dir or "")).parts
    session = parts[-3] if len(parts) >= 3 and parts[-2] == "runs" else ""
    return "learner " + hashlib.sha256(session.encode()).hexdigest()[:4] if session else "cli"


# the tables' columns, and their shares of the width: every header fits on one line at 1280 px, and the long
# cells (architecture, run) wrap between words
COMPARE_COLUMNS = ["run", "architecture", "parameters", "data", "tokenizer", "steps", "tokens seen", "val loss",
                   "bits/char", "time (s)", "status"]
COMPARE_WIDTHS = ["7%", "21%", "10%", "11%", "9%", "6%", "7%", "6%", "9%", "6%", "8%"]


def human_columns(table: list[dict], columns: list[str]) -> pd.DataFrame:
    """The table as shown: parameters and tokens as 808K / 4.17M (the rows keep the numbers for the plots)."""
    from ..model.estimate import human

    shown = [{k: (human(v) if k in ("parameters", "tokens seen") and isinstance(v, (int, float)) else v)
              for k, v in row.items()} for row in table]
    return pd.DataFrame(shown, columns=columns)


def _round(v, digits: int):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return round(v, digits) if math.isfinite(v) else None


def _points(steps: dict, evals: list, name: str, x_axis: str, y_axis: str) -> list[dict]:
    """Curve points of one run: steps {step: record} and evals [records], each with step / tokens_seen /
    elapsed_s and loss / val_loss / bits_per_char."""
    def x_of(step):
        s = steps.get(step)
        if s is None:  # an eval without its step record: the newest step before it
            before = [k for k in steps if k <= step]
            s = steps[max(before)] if before else None
        if x_axis == "tokens":
            return s.get("tokens_seen") if s else None
        if x_axis == "time":
            return s.get("elapsed_s") if s else None
        return step

    bpc = next((e["bits_per_char"] / e["val_loss"] for e in reversed(evals)
                if e.get("bits_per_char") and e.get("val_loss")), None)  # bits/char per nat/token: fixed per run
    out = []
    for e in evals:
        y = e.get("val_loss") if y_axis == "loss" else e.get("bits_per_char")
        out.append({"x": x_of(e["step"]), "y": y, "run": name, "split": "validation"})
    for step, s in sorted(steps.items()):
        y = s.get("loss") if y_axis == "loss" else (s["loss"] * bpc if bpc and s.get("loss") is not None else None)
        out.append({"x": x_of(step), "y": y, "run": name, "split": "train"})
    return [p for p in out if p["x"] is not None and p["y"] is not None and math.isfinite(p["y"])]


# what a damaged run record raises while it is read: the run is left out and named, the others are shown
DAMAGED = (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError)


def _session_rows(session, x_axis: str, y_axis: str):
    """(table rows, curve points, names of runs whose records cannot be read) of this session's runs."""
    table, curves, bad = [], [], []
    for name, r in session.runs.items():
        if not (r.dir / "run.json").is_file():
            continue
        try:
            row, points = _session_run(name, r, x_axis, y_axis)
        except DAMAGED:
            bad.append(name)
            continue
        table.append(row)
        curves += points
    return table, curves, bad


def _session_run(name: str, r, x_axis: str, y_axis: str):
    record = json.loads((r.dir / "run.json").read_text())
    spec = ModelSpec.from_dict(record["spec"])  # with the tokenizer's vocabulary: the count that trained
    history = read_history(r.dir)  # one record per (kind, step): a resume's repeated steps replace the old
    steps = {h["step"]: h for h in history if h["kind"] == "step"}
    evals = [h for h in history if h["kind"] == "eval"]
    last = steps[max(steps)] if steps else {}
    row = {"run": name, "architecture": spec.summary(), "parameters": estimate(spec).params,
           "data": data_label(record.get("data")), "tokenizer": record["tokenizer"]["kind"],
           "steps": max(steps) if steps else 0, "tokens seen": int(last.get("tokens_seen") or 0),
           "val loss": _round(evals[-1]["val_loss"], 4) if evals else None,
           "bits/char": _round(evals[-1].get("bits_per_char"), 4) if evals else None,
           "time (s)": _round(last.get("elapsed_s"), 1), "status": status_word(r.status)}
    return row, _points(steps, evals, name, x_axis, y_axis)


def _latest_per_step(hist: pd.DataFrame) -> dict:
    """{(run_id, step): value}: the newest value logged at each step (a resume logs its repeated steps again)."""
    if hist.empty:
        return {}
    hist = hist.sort_values("timestamp", kind="stable")
    return {(r.run_id, int(r.step)): r.value for r in hist.itertuples()}


def _mlflow_runs(uri: str, limit: int = 10):
    """(table rows, curves per run) of the newest `limit` runs in the MLflow store, as the session path gives."""
    from ..training.tracking import metric_history, runs_table

    df = runs_table(uri)
    if df.empty:
        return [], {}
    df = df.head(limit)
    ids = list(df["run_id"])
    hist = {key: _latest_per_step(metric_history(uri, ids, key))
            for key in ("train_loss", "tokens_seen", "elapsed_s", "val_loss", "bits_per_char")}
    names = list(df["run_name"])
    table, runs, bad = [], {}, []
    for row in df.to_dict("records"):
        rid = row["run_id"]
        name = row["run_name"] if names.count(row["run_name"]) == 1 else f"{row['run_name']} · {rid[:4]}"
        try:
            steps = {s: {"loss": v, "tokens_seen": hist["tokens_seen"].get((rid, s)),
                         "elapsed_s": hist["elapsed_s"].get((rid, s))}
                     for (r, s), v in hist["train_loss"].items() if r == rid}
            evals = [{"step": s, "val_loss": v, "bits_per_char": hist["bits_per_char"].get((rid, s))}
                     for (r, s), v in sorted(hist["val_loss"].items()) if r == rid]
            last = steps[max(steps)] if steps else {}
            table.append({"run": name, "architecture": row.get("tags.slm.architecture"),
                          "parameters": int(float(row.get("params.model.params") or 0)),
                          "data": row.get("params.data.name") or row.get("tags.slm.dataset"),
                          "tokenizer": row.get("params.tokenizer.kind"), "steps": max(steps) if steps else 0,
                          "tokens seen": int(last.get("tokens_seen") or 0),
                          "val loss": _round(evals[-1]["val_loss"], 4) if evals else None,
                          "bits/char": _round(evals[-1]["bits_per_char"], 4) if evals else None,
                          "time (s)": _round(last.get("elapsed_s"), 1),
                          "status": status_word(row.get("status"))})
        except DAMAGED:  # a run with malformed params or metrics: named, the others shown
            bad.append(str(name))
            continue
        runs[name] = (steps, evals)
    return table, runs, bad


def _mlflow_rows(uri: str, x_axis: str, y_axis: str):
    table, runs, bad = _mlflow_runs(uri)
    curves = [p for name, (steps, evals) in runs.items() for p in _points(steps, evals, name, x_axis, y_axis)]
    return table, curves, bad


def empty_curves(rows=()) -> pd.DataFrame:
    """The curves frame, numeric even when empty."""
    return pd.DataFrame(list(rows), columns=CURVE_COLUMNS).astype({"x": "float64", "y": "float64"})


def empty_scatter(rows=()) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=["params", "bits/char", "run"]).astype({"params": "int64",
                                                                                   "bits/char": "float64"})


def curves_chart(curves: pd.DataFrame, x_axis: str = "step", y_axis: str = "loss") -> dict:
    """A Vega-Lite spec: one colour per run, train solid, validation dashed with point markers."""
    x_title = {"tokens": "tokens seen", "time": "training time (s)"}.get(x_axis, "step")
    rows = curves.to_dict("records")
    color = {"field": "run", "type": "nominal", "title": "run"}
    # axis labels in the quantity's own format (one point's axis once read "0.000000"; a loss read ".38")
    x_format = {"tokens": "~s", "time": ",.3~g"}.get(x_axis, ",d")  # time ticks can be 0.5 s apart
    x = {"field": "x", "type": "quantitative", "title": x_title, "axis": {"format": x_format}}
    y = {"field": "y", "type": "quantitative", "title": Y_AXES.get(y_axis, y_axis), "scale": {"zero": False},
         "axis": {"format": ".2f"}}
    tooltip = [{"field": "run"}, {"field": "split"}, {"field": "x", "title": x_title, "format": ",.4~g"},
               {"field": "y", "title": y_axis, "format": ".4f"}]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": rows}, "height": 300,
        "usermeta": {"embedOptions": {"renderer": "svg"}},  # like Gradio's own plots: crisp, and in the page's DOM
        "title": "Loss curves: train solid, validation dashed",
        "encoding": {"x": x, "y": y, "color": color},
        "layer": [
            {"transform": [{"filter": "datum.split === 'train'"}],
             "mark": {"type": "line", "strokeWidth": 1.5, "clip": True},
             "encoding": {"detail": {"field": "run"}, "tooltip": tooltip}},
            {"transform": [{"filter": "datum.split === 'validation'"}],
             "mark": {"type": "line", "strokeDash": [6, 4], "strokeWidth": 2, "clip": True},
             "encoding": {"detail": {"field": "run"}, "tooltip": tooltip}},
            # a marker per eval in the run's colour (a run with a single eval still shows)
            {"transform": [{"filter": "datum.split === 'validation'"}],
             "mark": {"type": "point", "filled": True, "size": 60, "opacity": 1, "strokeOpacity": 0, "clip": True},
             "encoding": {"fill": {**color, "legend": None}, "tooltip": tooltip}},
        ],
    }


def curves_plot(curves: pd.DataFrame, x_axis: str = "step", y_axis: str = "loss"):
    """The chart for gr.Plot (Gradio draws a Vega-Lite spec it is given as an 'altair' plot)."""
    from gradio.components.plot import AltairPlotData

    # chart="line": the page applies its theme and sizes the chart to its box (without it the width stays 0).
    # A new mark each time: the page draws a chart again only when its spec changed, and a chart drawn before
    # its tab was left keeps the width 0 it got while hidden (the tab's select event sends it again, now drawn)
    chart = curves_chart(curves, x_axis, y_axis)
    chart["usermeta"]["drawn"] = time.monotonic_ns()
    return AltairPlotData(chart="line", plot=json.dumps(chart))


def compare_frames(session, mlflow_uri: str | None, x_axis: str = "step", y_axis: str = "loss"):
    """(table, curves frame, scatter frame, message) for this session's runs, or everyone's with mlflow_uri.
    A run whose records cannot be read is left out and named in the message; when the shared MLflow store
    cannot be read at all, this session's own runs are shown instead and the message says so."""
    x_axis = x_axis if x_axis in ("step", "tokens", "time") else "step"
    y_axis = y_axis if y_axis in Y_AXES else "loss"
    notes = []
    if mlflow_uri is None:
        table, curves, bad = _session_rows(session, x_axis, y_axis)
    else:
        try:
            table, curves, bad = _mlflow_rows(mlflow_uri, x_axis, y_axis)
        except Exception:
            log.warning("compare: the MLflow store cannot be read", exc_info=True)
            notes.append(STORE_UNREADABLE + " this session's own runs are shown instead.")
            table, curves, bad = _session_rows(session, x_axis, y_axis) if session is not None else ([], [], [])
    if bad:
        notes.append("⚠️ Not shown, because their records cannot be read (damaged run.json or metrics): "
                     + ", ".join(f"**{html.escape(str(n))}**" for n in bad) + ".")
    table_df = human_columns(table, COMPARE_COLUMNS)
    curves_df = empty_curves(curves)
    scatter = empty_scatter([{"params": t["parameters"], "bits/char": t["bits/char"], "run": t["run"]}
                             for t in table if t.get("bits/char") is not None])
    if not table and not bad:
        notes.append("No runs yet: train one on the Train tab.")
    return table_df, curves_df, scatter, "\n\n".join(notes)


STORE_UNREADABLE = "⚠️ The server's run store (MLflow) cannot be read just now, so everyone's runs are not available;"


BOARD_COLUMNS = ["data", "rank", "run", "bits/char", "parameters", "tokenizer", "architecture", "tokens seen",
                 "status"]
BOARD_WIDTHS = ["10%", "5%", "14%", "9%", "10%", "9%", "25%", "9%", "9%"]


def class_board(mlflow_uri: str, limit: int = 200) -> pd.DataFrame:
    """Everyone's runs on this server, grouped by data set and ranked by held-out bits per character (lower is
    better; comparable across tokenizers), with each model's parameter count beside it."""
    from ..training.tracking import runs_table

    df = runs_table(mlflow_uri)
    rows = []
    for row in (df.head(limit).to_dict("records") if not df.empty else []):
        bpc = _round(row.get("metrics.bits_per_char"), 4)
        if bpc is None:
            continue
        try:
            rows.append({"data": row.get("params.data.name") or row.get("tags.slm.dataset"),
                         "run": f"{row.get('run_name')} · {learner(row.get('tags.slm.run_dir'))}", "bits/char": bpc,
                         "parameters": int(float(row.get("params.model.params") or 0)),
                         "tokenizer": row.get("params.tokenizer.kind"),
                         "architecture": row.get("tags.slm.architecture"),
                         "tokens seen": int(float(row.get("metrics.tokens_seen") or 0)),
                         "status": status_word(row.get("status"))})
        except DAMAGED:  # malformed params of one run: the others are ranked
            continue
    board = pd.DataFrame(rows, columns=[c for c in BOARD_COLUMNS if c != "rank"])
    if board.empty:
        return pd.DataFrame(columns=BOARD_COLUMNS)
    board = board.sort_values(["data", "bits/char", "parameters"], kind="stable")
    board.insert(1, "rank", board.groupby("data").cumcount() + 1)
    return human_columns(board.reset_index(drop=True).to_dict("records"), BOARD_COLUMNS)
