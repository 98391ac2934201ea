"""MLflow tracking as a lifecycle plugin: one parent run per bench, a child per run.

Default store: SQLite inside the output directory, artifacts beside it. ``--tracking-uri`` and
``MLFLOW_TRACKING_URI`` override it. Layout:

- child runs are named like ``fedmef d=0.1 seed=0``; parameters are the run's config; per-round
  metrics are ``train_loss``, ``lr``, ``density``, ``round_upload_bytes``,
  ``round_download_bytes``, ``accuracy`` and ``loss`` (evaluated rounds), ``pruned``,
  ``grown`` and regularizer metrics (adjustment rounds); summary metrics (``final_accuracy``,
  ``upload_bytes`` totals, ``memory.*``, ...) are logged once, at the end, without a step;
- the parent run carries the mean summary metrics per method and density, the report's table
  and figures, and results.json; provenance (versions, commit, command, threads, device) is
  tagged on both; the experiment is tagged as model training, so the MLflow UI opens on its runs.

Tracking never blocks or costs a result: MLflow runs in a process of its own, which takes the
hooks' calls in order (importing MLflow and creating its store take seconds of Python: in a
thread they would hold the bench's interpreter; training starts meanwhile), and the bench waits
for it only at the end of each run; requests to a server time out after a few seconds with at
most one retry; any MLflow failure gives one warning (in the bench's main thread, at the next
hook), switches tracking off for the bench, and the bench goes on. The tracking process ignores
SIGINT and SIGTERM (the bench records an interrupt and marks the runs KILLED through it) and
ends when the bench does, or by itself once the bench process is gone.
A resumed bench continues in the same parent and child runs (found by their tags); interrupted
runs are marked KILLED.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import signal
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fedprune import hookimpl

EXPERIMENT = "fedprune"
#: Seconds a tracking server may take to accept a connection or answer a request.
TIMEOUT = 4
STATUS = {"ok": "FINISHED", "interrupted": "KILLED"}


class TrackingWarning(UserWarning):
    """MLflow failed; the bench continues without tracking."""


def default_tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def resolve_tracking_uri(option: str | None, output_dir: Path) -> str:
    """Command-line option, else ``MLFLOW_TRACKING_URI``, else SQLite in the output directory."""
    return option or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(output_dir)


def _quiet_and_bounded() -> None:
    """Silence MLflow's INFO lines and bound its HTTP requests (before the client exists)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import mlflow  # noqa: F401  (configures its loggers on import: quieten them after)

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(TIMEOUT))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")


def check_reachable(uri: str, timeout: float = TIMEOUT) -> None:
    """Raise OSError unless an http(s) tracking server accepts a connection within ``timeout``."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    with socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=timeout):
        pass


class MLflowTracker:
    """The lifecycle plugin: forwards each hook, in order, to a `_Session` in a process of its
    own (`_serve`), so MLflow's import, its store and its requests never hold this process."""

    def __init__(self, tracking_uri: str, output_dir: Path) -> None:
        self.uri = tracking_uri
        self.output_dir = output_dir
        self.failed = False
        self._proc: Any = None
        self._inbox: Any = None  # to the session: (method name, args), "sync", or None to stop
        self._outbox: Any = None  # from the session: ("failed", message) or ("sync", None)

    def _guard(self, action: str, *args: Any) -> None:
        """Queue the session's ``action`` (after every earlier one)."""
        self._poll()
        if self.failed:
            return
        if self._proc is None:
            context = multiprocessing.get_context("spawn")  # no fork of a threaded process
            self._inbox, self._outbox = context.Queue(), context.Queue()
            self._proc = context.Process(
                target=_serve, args=(self.uri, self.output_dir, self._inbox, self._outbox),
                name="fedprune-mlflow", daemon=True)
            self._proc.start()
        self._inbox.put((action, args))

    def _wait(self) -> None:
        """Wait for every queued call, then say what failed."""
        if self._proc is None or self.failed:
            return
        self._inbox.put(("sync", ()))
        while not self.failed:  # after a failure the session does nothing more
            try:
                kind, message = self._outbox.get(timeout=1.0)
            except queue.Empty:
                if not self._proc.is_alive():
                    self._fail(_failure(self.uri, "the tracking process ended (exit code "
                                                  f"{self._proc.exitcode})"))
                continue
            if kind == "sync":
                return
            self._fail(message)

    def _poll(self) -> None:
        """Warn about failures reported so far (from this, the main, thread)."""
        while self._outbox is not None and not self.failed:
            try:
                kind, message = self._outbox.get_nowait()
            except queue.Empty:
                return
            if kind == "failed":
                self._fail(message)

    def _fail(self, message: str) -> None:
        if not self.failed:
            self.failed = True
            warnings.warn(message, TrackingWarning, stacklevel=4)

    def _stop(self) -> None:
        if self._proc is None:
            return
        self._inbox.put(None)
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
        self._proc = None

    # --------------------------------------------------------------------------------- hooks

    @hookimpl
    def fedprune_bench_start(self, bench):
        self._guard("start_bench", bench)

    @hookimpl
    def fedprune_run_start(self, run):
        self._guard("start_run", run)

    @hookimpl
    def fedprune_round_end(self, run, round, metrics):
        self._guard("log_round", dict(metrics), round)

    @hookimpl
    def fedprune_run_end(self, run, result):
        self._guard("end_run", run, dict(result))
        self._wait()  # a finished run is tracked before the next one starts

    @hookimpl
    def fedprune_bench_end(self, bench, results):
        self._guard("end_bench", list(results))
        self._wait()
        self._stop()


def _serve(uri: str, output_dir: Path, inbox: Any, outbox: Any) -> None:
    """The tracking process: run the session's calls in order until told to stop, or until
    the bench process is gone (killed: nothing will stop us)."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # the bench decides what they mean (Ctrl-C
        signal.signal(signum, signal.SIG_IGN)        # and killpg reach the whole group)
    session, parent, failed = _Session(uri, output_dir), os.getppid(), False
    while True:
        try:
            item = inbox.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if item is None:
            return
        action, args = item
        if action == "sync":
            outbox.put(("sync", None))
        elif not failed:
            try:
                getattr(session, action)(*args)
            except Exception as exc:
                failed = True
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                outbox.put(("failed", _failure(uri, f"{type(exc).__name__}: {first[:300]}")))


def _failure(uri: str, what: str) -> str:
    return (f"MLflow tracking at {uri} failed and is off for the rest of this bench ({what}); "
            "results.json is still written")


class _Session:
    """MLflow's side: one parent run per bench, a child per run."""

    def __init__(self, tracking_uri: str, output_dir: Path) -> None:
        self.uri = tracking_uri
        self.output_dir = output_dir
        self.client: Any = None
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.child_id: str | None = None
        self.bench_id = ""

    # ---------------------------------------------------------------------------- mlflow calls

    def start_bench(self, bench) -> None:
        _quiet_and_bounded()
        check_reachable(self.uri)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        self.bench_id = bench.id
        exp = self.client.get_experiment_by_name(bench.experiment)
        if exp is None:
            artifacts = None
            if self.uri.startswith("sqlite:"):  # else MLflow puts artifacts in ./mlruns
                artifacts = (self.output_dir / "mlartifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(
                bench.experiment, artifact_location=artifacts,
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        else:
            self.experiment_id = exp.experiment_id
        # fedprune.method too, so grouping the runs by method shows the parent as its own
        # group, not as MLflow's "Unassigned"
        tags = {"fedprune.kind": "bench", "fedprune.bench_id": bench.id,
                "fedprune.method": "(bench)", "fedprune.methods": ",".join(bench.methods),
                **_provenance_tags(bench.provenance)}
        self.parent_id = self._find({"fedprune.kind": "bench"}) if bench.resumed else None
        if self.parent_id is None:
            run = self.client.create_run(self.experiment_id, run_name="bench " + ",".join(
                bench.methods), tags=tags)
            self.parent_id = run.info.run_id
            self._log_params(self.parent_id, {
                "methods": ",".join(bench.methods), "seeds": ",".join(map(str, bench.seeds)),
                "grid": len(bench.grid), **_params(bench.config.record())})
        else:
            self.client.update_run(self.parent_id, status="RUNNING")

    def _find(self, tags: dict[str, str]) -> str | None:
        """The run of this bench carrying ``tags`` (a resumed bench continues its runs)."""
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in
                             {**tags, "fedprune.bench_id": self.bench_id}.items())
        found = self.client.search_runs([self.experiment_id], query, max_results=1)
        return found[0].info.run_id if found else None

    def log_round(self, metrics: dict[str, float], round: int) -> None:
        if self.child_id:
            self._log_metrics(self.child_id, metrics, round)

    def start_run(self, run) -> None:
        self.child_id = self._find({"fedprune.key": run.key}) if run.resumed_from else None
        if self.child_id is not None:
            self.client.update_run(self.child_id, status="RUNNING")
            return
        child = self.client.create_run(
            self.experiment_id,
            run_name=run.run_name,
            tags={
                "mlflow.parentRunId": self.parent_id,
                "fedprune.kind": "run",
                "fedprune.bench_id": self.bench_id,
                "fedprune.key": run.key,
                "fedprune.method": run.method,
                "fedprune.seed": str(run.seed),
                "fedprune.density": f"{run.config.density:g}",
                **{f"fedprune.{k}": str(v) for k, v in run.components.items()},
            },
        )
        self.child_id = child.info.run_id
        self._log_params(self.child_id, {"method": run.method, "seed": run.seed,
                                         **_params(run.config.record())})

    def end_run(self, run, result) -> None:
        if not self.child_id:
            return
        final = {k: float(result[k]) for k in SUMMARY if isinstance(result.get(k), (int, float))}
        for key, value in (result.get("memory") or {}).items():
            if isinstance(value, (int, float)):
                final[f"memory.{key}"] = float(value)
        self._log_metrics(self.child_id, final, None)
        for key, value in {"fedprune.status": result["status"],
                           **_provenance_tags(result.get("provenance") or {})}.items():
            self.client.set_tag(self.child_id, key, value)
        if result.get("error"):
            self.client.set_tag(self.child_id, "fedprune.error", str(result["error"])[:5000])
        self._log_json(self.child_id, [result])
        self.client.set_terminated(self.child_id, STATUS.get(result["status"], "FAILED"))
        self.child_id = None

    def end_bench(self, results) -> None:
        if not self.parent_id:
            return
        self._log_metrics(self.parent_id, _group_means(results), None)
        self._log_json(self.parent_id, results)
        report = self.output_dir / "report"
        if report.is_dir():
            self.client.log_artifacts(self.parent_id, str(report), "report")
        statuses = {r.get("status") for r in results}
        status = ("KILLED" if "interrupted" in statuses else
                  "FINISHED" if statuses <= {"ok"} else "FAILED")
        self.client.set_terminated(self.parent_id, status)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, str(v)[:6000]) for k, v in params.items()]
        self.client.log_batch(run_id, params=batch)

    def _log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def _log_json(self, run_id: str, payload: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.json"
            path.write_text(json.dumps(payload, indent=2, default=str))
            self.client.log_artifact(run_id, str(path))


#: A run's summary metrics (logged once, at its end).
SUMMARY = ("final_accuracy", "best_accuracy", "final_loss", "density", "upload_bytes",
           "download_bytes", "wall_seconds")


def _params(record: dict[str, Any]) -> dict[str, Any]:
    options = record.pop("options", {}) or {}
    return {**record, **{f"option.{k}": v for k, v in sorted(options.items())}}


def _provenance_tags(provenance: dict[str, Any]) -> dict[str, str]:
    return {f"fedprune.provenance.{k}": str(v)[:5000] for k, v in provenance.items()}


def _group_means(results: list[dict[str, Any]]) -> dict[str, float]:
    """Mean final and best accuracy per (method, density) over successful runs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if r.get("status") == "ok":
            density = (r.get("config") or {}).get("density", "")
            groups.setdefault(f"{r['method']}.d{density:g}" if density != "" else r["method"],
                              []).append(r)
    out = {}
    for name, runs in groups.items():
        for key in ("final_accuracy", "best_accuracy", "upload_bytes"):
            out[f"{name}.{key}"] = sum(r[key] for r in runs) / len(runs)
    return {k.replace("+", "_plus_"): v for k, v in out.items()}
