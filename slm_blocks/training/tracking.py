"""MLflow tracking for every run, and the tables / curves that compare runs.

By default the store is a SQLite file next to the runs (`<runs root>/mlflow.db`, artifacts in
`<runs root>/mlartifacts`), so nothing needs a server; set MLFLOW_TRACKING_URI to share one server with a
class. We talk to MLflow through an explicit `MlflowClient` and run id, never the process-global "active
run", so several trainings in one app process never write into each other's runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .events import CheckpointEvent, DoneEvent, EvalEvent, SampleEvent, StepEvent, WarningEvent
from .schema import flatten

EXPERIMENT = "slm-blocks"
__all__ = ["EXPERIMENT", "Tracker", "flatten", "mark_failed", "metric_history", "runs_table", "tracking_uri"]


def tracking_uri(root: str | Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store in `root` (the runs folder, or the app's data dir)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    from ..quiet import quiet_mlflow

    quiet_mlflow()
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in the working directory
        artifacts = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except Exception:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


class Tracker:
    """Logs one training run: params at start, metrics per step and eval, samples, the final checkpoint."""

    def __init__(self, run, uri: str | None = None, experiment: str = EXPERIMENT, flush_every: int = 50):
        self.run = run
        self.uri = uri or tracking_uri(run.dir.parent)
        self.client = _client(self.uri)
        self.buffer: list = []
        self.flush_every = flush_every
        run_id = run.meta.get("mlflow_run_id")
        if run_id and self._exists(run_id):
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            exp = _experiment_id(self.client, self.uri, experiment)
            tags = {"slm.architecture": run.spec.summary(), "slm.dataset": run.corpus.name or run.data_config.source,
                    "slm.tokenizer": run.tokenizer_config.kind, "slm.run_dir": str(run.dir.resolve())}
            self.run_id = self.client.create_run(exp, run_name=run.dir.name, tags=tags).info.run_id
            self._log_params(run)
            run.meta["mlflow_run_id"] = self.run_id
            run.save()
            self.client.log_text(self.run_id, run.spec.to_json(), "spec.json")

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:
            return False

    def _log_params(self, run) -> None:
        from mlflow.entities import Param

        from ..model.estimate import estimate

        params = {**flatten(run.spec.to_dict(), "spec"), **flatten(run.train_config.to_dict(), "train"),
                  **flatten(run.data_config.to_dict(), "data"), **flatten(run.tokenizer_config.to_dict(), "tokenizer"),
                  "model.params": str(estimate(run.spec).params), "data.name": run.corpus.name,
                  "train.peak_lr": str(run.train_config.peak_lr())}  # an empty lr: the optimizer's default
        for key in ("init_from", "teacher"):  # what a grown run starts from / learns from (slm_blocks.grow)
            if isinstance(run.meta.get(key), dict):
                params.update(flatten(run.meta[key], key))
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def _metric(self, key: str, value: float, step: int) -> None:
        import time

        from mlflow.entities import Metric

        if value is not None and value == value:  # skip None / NaN
            self.buffer.append(Metric(key, float(value), int(time.time() * 1000), step))

    def flush(self) -> None:
        while self.buffer:
            batch, self.buffer = self.buffer[:1000], self.buffer[1000:]
            self.client.log_batch(self.run_id, metrics=batch)

    def on_event(self, event) -> None:
        if isinstance(event, StepEvent):
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "elapsed_s"):
                self._metric("train_loss" if key == "loss" else key, getattr(event, key), event.step)
            for key, name in (("kd_loss", "train_kd"), ("ce_loss", "train_ce"), ("aux_loss", "aux_loss")):
                self._metric(name, getattr(event, key), event.step)
            if len(self.buffer) >= self.flush_every:
                self.flush()
        elif isinstance(event, EvalEvent):
            for key in ("val_loss", "perplexity", "bits_per_char", "accuracy"):
                self._metric(key, getattr(event, key), event.step)
            self.flush()
        elif isinstance(event, SampleEvent):
            self.client.log_text(self.run_id, event.text, f"samples/step-{event.step:06d}.txt")
        elif isinstance(event, WarningEvent):
            self.client.log_text(self.run_id, event.message, f"warnings/step-{event.step:06d}.txt")
        elif isinstance(event, CheckpointEvent):
            self._metric("checkpoint_step", event.step, event.step)
        elif isinstance(event, DoneEvent):
            self.flush()
            self.client.set_tag(self.run_id, "slm.end_reason", event.reason)
            if event.checkpoint and os.environ.get("SLM_MLFLOW_CHECKPOINTS", "1") != "0":  # the app's workers: "0"
                for name in ("model.safetensors", "trainer_state.json"):
                    if (Path(event.checkpoint) / name).is_file():
                        self.client.log_artifact(self.run_id, str(Path(event.checkpoint) / name), "checkpoint")
            status = {"error": "FAILED", "stopped": "KILLED"}.get(event.reason, "FINISHED")
            self.client.set_terminated(self.run_id, status)

    def fail(self, message: str) -> None:
        """Training raised: the MLflow run is FAILED (never left RUNNING), with the message as a tag."""
        try:
            self.flush()
        finally:
            mark_failed(self.uri, self.run_id, message, client=self.client)

    def stopped(self, message: str) -> None:
        try:
            self.flush()
        finally:
            self.client.set_tag(self.run_id, "slm.end_reason", "stopped")
            self.client.set_terminated(self.run_id, "KILLED")


def mark_failed(uri: str, run_id: str, message: str, client=None) -> bool:
    """End a RUNNING MLflow run as FAILED (e.g. its worker was killed); True when it was marked."""
    client = client or _client(uri)
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_tag(run_id, "slm.error", message[:500])
        client.set_terminated(run_id, "FAILED")
        return True
    except Exception:  # the store is gone or the run was deleted: nothing left to mark
        return False


def delete_artifacts(uri: str, run_ids: list[str]) -> int:
    """Delete the local artifact folders of these MLflow runs (their params and metrics stay, for Compare);
    returns how many were deleted. Only `file:` artifact locations are touched."""
    import shutil
    from urllib.parse import unquote, urlparse

    if not run_ids:
        return 0
    client, deleted = _client(uri), 0
    for run_id in run_ids:
        try:
            location = client.get_run(run_id).info.artifact_uri or ""
        except Exception:  # the store is gone or the run was never created
            continue
        parsed = urlparse(location)
        if parsed.scheme == "file" or (not parsed.scheme and location.startswith("/")):
            path = Path(unquote(parsed.path if parsed.scheme else location))
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                deleted += 1
    return deleted


# ----------------------------------------------------------------------------- comparing runs


def runs_table(uri: str, experiment: str = EXPERIMENT) -> pd.DataFrame:
    """One row per run: name, status, architecture, parameters, dataset, tokenizer, final metrics."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return pd.DataFrame()
    rows = []
    for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000):
        rows.append({"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
                     "start_time": pd.to_datetime(r.info.start_time, unit="ms"),
                     **{f"metrics.{k}": v for k, v in r.data.metrics.items()},
                     **{f"params.{k}": v for k, v in r.data.params.items()},
                     **{f"tags.{k}": v for k, v in r.data.tags.items()}})
    return pd.DataFrame(rows)


def metric_history(uri: str, run_ids: list[str], key: str = "train_loss") -> pd.DataFrame:
    """Long format (run_id, step, value, timestamp) for overlaid curves."""
    client = _client(uri)
    rows = [{"run_id": rid, "step": m.step, "value": m.value, "timestamp": m.timestamp}
            for rid in run_ids for m in client.get_metric_history(rid, key)]
    return pd.DataFrame(rows, columns=["run_id", "step", "value", "timestamp"])
