"""MLflow tracking as a lifecycle plugin: one parent run per bench, a child per (method, seed).

Default store: SQLite inside the output directory, artifacts beside it. ``--tracking-uri`` and
``MLFLOW_TRACKING_URI`` override it. Tracking never costs a result: if MLflow fails, a warning
says so, tracking stops, and the bench and its results.json go on.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from fedprune import hookimpl

EXPERIMENT = "fedprune"


class TrackingWarning(UserWarning):
    """MLflow failed; the bench continues without tracking."""


def default_tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def resolve_tracking_uri(option: str | None, output_dir: Path) -> str:
    """Command-line option, else ``MLFLOW_TRACKING_URI``, else SQLite in the output directory."""
    return option or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(output_dir)


class MLflowTracker:
    def __init__(self, tracking_uri: str, output_dir: Path, experiment: str = EXPERIMENT) -> None:
        self.uri = tracking_uri
        self.output_dir = output_dir
        self.experiment = experiment
        self.client: Any = None
        self.parent_id: str | None = None
        self.child_id: str | None = None
        self.failed = False

    def _guard(self, action, *args, **kwargs) -> None:
        if self.failed:
            return
        try:
            action(*args, **kwargs)
        except Exception as exc:
            self.failed = True
            warnings.warn(
                f"MLflow tracking at {self.uri} failed and is off for the rest of this bench "
                f"({type(exc).__name__}: {exc}); results.json is still written",
                TrackingWarning,
                stacklevel=2,
            )

    # --------------------------------------------------------------------------------- hooks

    @hookimpl
    def fedprune_bench_start(self, bench):
        self._guard(self._start_bench, bench)

    @hookimpl
    def fedprune_run_start(self, run):
        self._guard(self._start_run, run)

    @hookimpl
    def fedprune_round_end(self, run, round, metrics):
        if self.child_id:
            self._guard(self._log_metrics, self.child_id, metrics, round)

    @hookimpl
    def fedprune_run_end(self, run, result):
        self._guard(self._end_run, run, result)

    @hookimpl
    def fedprune_bench_end(self, bench, results):
        self._guard(self._end_bench, results)

    # ---------------------------------------------------------------------------- mlflow calls

    def _start_bench(self, bench) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            artifacts = None
            if self.uri.startswith("sqlite:"):  # else MLflow puts artifacts in ./mlruns
                artifacts = (self.output_dir / "mlartifacts").resolve().as_uri()
            exp_id = self.client.create_experiment(self.experiment, artifact_location=artifacts)
        else:
            exp_id = exp.experiment_id
        self.experiment_id = exp_id
        run = self.client.create_run(
            exp_id,
            run_name="bench " + ",".join(bench.methods),
            tags={"fedprune.kind": "bench", "fedprune.methods": ",".join(bench.methods)},
        )
        self.parent_id = run.info.run_id
        self.client.log_param(self.parent_id, "methods", ",".join(bench.methods))
        self.client.log_param(self.parent_id, "seeds", ",".join(map(str, bench.seeds)))
        self._log_params(self.parent_id, bench.config.as_params())

    def _start_run(self, run) -> None:
        child = self.client.create_run(
            self.experiment_id,
            run_name=run.run_name,
            tags={
                "mlflow.parentRunId": self.parent_id,
                "fedprune.kind": "run",
                "fedprune.method": run.method,
                "fedprune.seed": str(run.seed),
                **{f"fedprune.{k}": str(v) for k, v in run.components.items()},
            },
        )
        self.child_id = child.info.run_id
        self._log_params(self.child_id, {"method": run.method, "seed": run.seed,
                                          **run.config.as_params()})

    def _end_run(self, run, result) -> None:
        if not self.child_id:
            return
        final = {k: float(v) for k, v in result.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed"}
        for key, value in (result.get("memory") or {}).items():
            if isinstance(value, (int, float)):
                final[f"memory.{key}"] = float(value)
        self._log_metrics(self.child_id, final, None)
        self.client.set_tag(self.child_id, "fedprune.status", result["status"])
        if result.get("error"):
            self.client.set_tag(self.child_id, "fedprune.error", result["error"][:5000])
        self._log_json(self.child_id, [result])
        self.client.set_terminated(
            self.child_id, "FINISHED" if result["status"] == "ok" else "FAILED"
        )
        self.child_id = None

    def _end_bench(self, results) -> None:
        if not self.parent_id:
            return
        self._log_json(self.parent_id, results)
        ok = all(r.get("status") == "ok" for r in results)
        self.client.set_terminated(self.parent_id, "FINISHED" if ok else "FAILED")

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, str(v)[:6000]) for k, v in params.items()]
        self.client.log_batch(run_id, params=batch)

    def _log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=batch)

    def _log_json(self, run_id: str, payload: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.json"
            path.write_text(json.dumps(payload, indent=2, default=str))
            self.client.log_artifact(run_id, str(path))
