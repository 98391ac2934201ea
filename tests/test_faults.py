"""Faults survived: killed and interrupted benches resume, outputs are never lost or replaced
silently, divergence is caught, tracking never blocks, observers cannot cost a result.

Real processes: a bench runs as ``python -m fedprune`` in its own session and is killed with
real signals; tracking servers are sockets on 127.0.0.1 that refuse or never answer, closed at
the end of their test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from servers import free_port, stop

import fedprune
from fedprune.cli import main
from fedprune.engine.events import ObserverWarning
from fedprune.tracking import TrackingWarning

#: A bench slow enough to be caught mid-run (about 0.1 s a round), fast enough for a test.
BENCH = ["bench", "--methods", "fedavg,feddst", "--rounds", "30", "--clients", "4",
         "--clients-per-round", "2", "--local-steps", "4", "--batch-size", "16",
         "--eval-every", "5", "-o", "cnn.width=8", "-o", "cosine.interval=4", "--threads", "1",
         "--checkpoint-every", "3"]
COMPARED = ("final_accuracy", "best_accuracy", "final_loss", "density", "upload_bytes",
            "download_bytes", "history", "adjustments", "memory")


def launch(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "FEDPRUNE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "fedprune", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the bench ended early:\n{log.read_text()[-3000:]}")
        if time.monotonic() > end:
            stop(proc)
            raise AssertionError(f"timed out:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)


def second_run_checkpointed(out: Path):
    return lambda: any("feddst" in p.name for p in (out / "checkpoints").glob("*.pt"))


def compare(a: list[dict], b: list[dict]) -> None:
    assert [(r["key"], r["status"]) for r in a] == [(r["key"], r["status"]) for r in b]
    for x, y in zip(a, b, strict=True):
        for key in COMPARED:
            if key == "memory":  # the RSS delta is physical noise
                x, y = (dict(r, memory={k: v for k, v in r["memory"].items()
                                        if k != "peak_rss_delta_bytes"}) for r in (x, y))
            assert x[key] == y[key], (x["key"], key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    result = CliRunner().invoke(main, [*BENCH, "--no-tracking", "--output", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text())


def test_a_killed_bench_resumes_to_the_uninterrupted_results(tmp_path, reference):
    out = tmp_path / "out"
    proc = launch([*BENCH, "--output", str(out)], tmp_path / "bench.log")
    wait_for(second_run_checkpointed(out), proc, tmp_path / "bench.log")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    done = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in done] == ["fedavg"]  # the finished run survived
    result = CliRunner().invoke(main, ["bench", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    resumed = json.loads((out / "results.json").read_text())
    compare(resumed, reference)
    assert not list((out / "checkpoints").glob("*.pt"))  # finished runs leave none behind
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fedprune").experiment_id])
    children = [r for r in runs if r.data.tags.get("fedprune.kind") == "run"]
    assert len(children) == 2  # the resumed run continued its own MLflow run
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_records_the_run_in_flight_and_marks_tracking_killed(
    tmp_path, signum, code, reference
):
    out = tmp_path / "out"
    log = tmp_path / "bench.log"
    proc = launch([*BENCH, "--output", str(out)], log)
    wait_for(second_run_checkpointed(out), proc, log)
    os.killpg(proc.pid, signum)
    assert proc.wait(60) == code, log.read_text()[-3000:]
    text = log.read_text()
    assert f"fedprune bench --resume {out}" in text and "Traceback" not in text
    records = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in records] == ["ok", "interrupted"]
    assert records[1]["round"] >= 3
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fedprune").experiment_id])
    status = {r.data.tags.get("fedprune.key", "bench"): r.info.status for r in runs}
    assert status["bench"] == "KILLED" and status["feddst d=0.2 seed=0"] == "KILLED"
    assert status["fedavg d=1 seed=0"] == "FINISHED"
    result = CliRunner().invoke(main, ["bench", "--resume", str(out), "--no-tracking"])
    assert result.exit_code == 0, result.output
    compare(json.loads((out / "results.json").read_text()), reference)


# ------------------------------------------------------------------------------ output safety

TINY = ["--rounds", "1", "--clients", "4", "--clients-per-round", "2", "--local-steps", "1",
        "-o", "cnn.width=4", "--no-tracking"]


def test_a_second_bench_refuses_an_output_that_holds_results(tmp_path):
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["bench", *TINY, "--output", str(out)]).exit_code == 0
    before = (out / "results.json").read_text()
    again = CliRunner().invoke(main, ["bench", *TINY, "--dataset", "cifar10", "--data-root",
                                      str(tmp_path / "none"), "--output", str(out)])
    assert again.exit_code == 2 and "already holds a bench's results" in again.output
    assert "--resume" in again.output and "--overwrite" in again.output
    assert (out / "results.json").read_text() == before
    # --overwrite replaces it; a failure before the first run never writes [] over anything
    failed = CliRunner().invoke(main, ["bench", *TINY, "--dataset", "cifar10", "--data-root",
                                       str(tmp_path / "none"), "--output", str(out),
                                       "--overwrite"])
    assert failed.exit_code == 1 and not (out / "results.json").exists()


def test_an_unwritable_output_is_refused_before_any_training(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    under = CliRunner().invoke(main, ["bench", *TINY, "--output", str(target / "out")])
    assert under.exit_code == 2 and "is a file, not a directory" in under.output
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere: the permission check cannot fail here")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = CliRunner().invoke(main, ["bench", *TINY, "--output", str(locked)])
    assert result.exit_code == 2 and "cannot write to the output directory" in result.output


# --------------------------------------------------------------------------------- divergence


def test_a_diverging_run_is_recorded_as_diverged_with_its_round(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--methods", "feddst,fedavg", "--rounds", "3",
                                       "--lr", "1e12", *TINY[2:], "--output", str(out)])
    assert result.exit_code == 1
    records = json.loads((out / "results.json").read_text())
    assert {r["status"] for r in records} == {"diverged"}
    assert all(1 <= r["round"] <= 3 and "non-finite" in r["error"] for r in records)


# ---------------------------------------------------------------------------------- tracking


class Silent:
    """A server on 127.0.0.1 that accepts connections and never answers (closed by stop())."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def stop(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()
        self.thread.join(5)


@pytest.mark.parametrize("kind", ["refuses", "never answers"])
def test_an_unusable_tracking_server_is_one_warning_within_seconds(tmp_path, kind):
    server = Silent() if kind == "never answers" else None
    port = server.port if server else free_port()
    out = tmp_path / "out"
    start = time.monotonic()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = CliRunner().invoke(main, ["bench", *TINY[:-1], "--output", str(out),
                                               "--tracking-uri", f"http://127.0.0.1:{port}"])
    finally:
        if server:
            server.stop()
    assert time.monotonic() - start < 30
    assert result.exit_code == 0, result.output
    assert len([w for w in caught if issubclass(w.category, TrackingWarning)]) == 1
    assert json.loads((out / "results.json").read_text())[0]["status"] == "ok"


# ---------------------------------------------------------------------------------- observers


def test_an_observer_that_raises_is_named_and_costs_no_result(tmp_path, monkeypatch):
    from fedprune import plugins

    nosy = types.ModuleType("nosy")

    def explode(**kwargs):
        raise RuntimeError("observer exploded")

    nosy.fedprune_run_start = fedprune.hookimpl(lambda run: explode())
    nosy.fedprune_run_end = fedprune.hookimpl(lambda run, result: explode())
    real = plugins.get_plugin_manager

    def with_nosy(autoload=None):
        pm = real(autoload)
        pm.register(nosy, name="nosy")
        return pm

    monkeypatch.setattr(plugins, "get_plugin_manager", with_nosy)
    out = tmp_path / "out"
    with pytest.warns(ObserverWarning) as caught:
        result = CliRunner().invoke(main, ["bench", "--methods", "fedavg,feddst", *TINY,
                                           "--output", str(out)])
    assert result.exit_code == 0, result.output
    [warning] = [w for w in caught if w.category is ObserverWarning]  # skipped after that
    assert "plugin 'nosy' failed in fedprune_run_start" in str(warning.message)
    assert [r["status"] for r in json.loads((out / "results.json").read_text())] == ["ok", "ok"]


def test_threads_and_device_are_recorded(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", *TINY, "--threads", "1", "--output", str(out)])
    assert result.exit_code == 0, result.output
    provenance = json.loads((out / "results.json").read_text())[0]["provenance"]
    assert provenance["threads"] == 1 and provenance["device"] == "cpu"
    assert {"fedprune", "torch", "python", "command", "git_commit"} <= set(provenance)
