"""MLflow tracking against a real SQLite store and a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from servers import free_port, http_ok, serve

from fedprune.cli import main
from fedprune.tracking import TrackingWarning


def runs_of(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("fedprune")
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time"])


def check_runs(uri: str, methods: list[str], rounds: int) -> None:
    client, runs = runs_of(uri)
    parents = [r for r in runs if r.data.tags.get("fedprune.kind") == "bench"]
    children = [r for r in runs if r.data.tags.get("fedprune.kind") == "run"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.params["methods"] == ",".join(methods)
    assert parent.data.tags["fedprune.method"] == "(bench)"  # a group of its own, by method
    assert sorted(c.data.tags["fedprune.method"] for c in children) == sorted(methods)
    exp = client.get_experiment_by_name("fedprune")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the training view
    assert "fedprune.provenance.torch" in parent.data.tags
    for child in children:
        method = child.data.tags["fedprune.method"]
        density = 1 if method == "fedavg" else 0.2  # a dense method runs at density 1
        assert child.info.run_name == f"{method} d={density:g} seed=0"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params["rounds"] == str(rounds)
        assert child.data.tags["fedprune.status"] == "ok"
        assert child.data.tags["fedprune.provenance.threads"]
        history = client.get_metric_history(child.info.run_id, "accuracy")
        assert sorted(m.step for m in history) == list(range(1, rounds + 1))
        assert "final_accuracy" in child.data.metrics and "rounds" not in child.data.metrics
        per_round = client.get_metric_history(child.info.run_id, "round_upload_bytes")
        assert sorted(m.step for m in per_round) == list(range(1, rounds + 1))
        [total] = client.get_metric_history(child.info.run_id, "upload_bytes")
        assert total.value == sum(m.value for m in per_round)  # the total, logged once
        assert f"{method}.d{density:g}.final_accuracy" in parent.data.metrics
        artifact = client.download_artifacts(child.info.run_id, "results.json")
        assert json.loads(Path(artifact).read_text())[0]["method"] == child.data.tags[
            "fedprune.method"]
    artifact = client.download_artifacts(parent.info.run_id, "results.json")
    assert len(json.loads(Path(artifact).read_text())) == len(methods)


def test_default_store_is_sqlite_in_the_output_directory(tmp_path, tiny_args, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--methods", "fedavg,feddst", "--output",
                                       str(out), *tiny_args])
    assert result.exit_code == 0, result.output
    assert (out / "mlflow.db").exists()
    assert not (tmp_path / "mlruns").exists()  # artifacts stay inside the output directory
    check_runs(f"sqlite:///{out / 'mlflow.db'}", ["fedavg", "feddst"], 2)


def test_environment_variable_overrides_the_default(tmp_path, tiny_args, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--output", str(out), *tiny_args])
    assert result.exit_code == 0, result.output
    assert not (out / "mlflow.db").exists()
    check_runs(uri, ["fedavg"], 2)


def test_unreachable_tracking_server_costs_no_results(tmp_path, tiny_args):
    out = tmp_path / "out"
    port = free_port()
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    with pytest.warns(TrackingWarning, match="MLflow tracking at .* failed"):
        result = CliRunner().invoke(
            main, ["bench", "--output", str(out), "--tracking-uri", f"http://127.0.0.1:{port}",
                   *tiny_args], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())[0]["status"] == "ok"


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    store = tmp_path / "server.db"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
           "--default-artifact-root", (tmp_path / "artifacts").as_uri(), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": "*"}
    url = f"http://127.0.0.1:{port}"
    with serve(cmd, tmp_path / "mlflow-server.log", http_ok(url + "/health"), env=env):
        yield url


def test_bench_logs_to_a_real_mlflow_server(mlflow_server, tmp_path, tiny_args):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--methods", "fedavg,prunefl", "--output",
                                       str(out), "--tracking-uri", mlflow_server, *tiny_args])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    check_runs(mlflow_server, ["fedavg", "prunefl"], 2)


def test_ui_serves_a_copied_output_with_its_own_artifacts(tmp_path, tiny_args):
    import shutil
    import urllib.request

    original = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--output", str(original), *tiny_args])
    assert result.exit_code == 0, result.output
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, moved)
    shutil.rmtree(original)  # the copy must not depend on the original
    port = free_port()
    cmd = [sys.executable, "-m", "fedprune", "ui", str(moved), "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with serve(cmd, tmp_path / "ui.log", http_ok(url + "/health")):
        printed = (tmp_path / "ui.log").read_text()
        assert f"fedprune: {url}/#/experiments/" in printed
        body = json.dumps({"experiment_ids": ["1"], "max_results": 10}).encode()
        request = urllib.request.Request(url + "/api/2.0/mlflow/runs/search", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.loads(response.read())["runs"]
        child = next(r for r in runs if {"key": "fedprune.kind", "value": "run"}
                     in r["data"]["tags"])
        run_id = child["info"]["run_id"]
        with urllib.request.urlopen(f"{url}/get-artifact?path=results.json&run_uuid={run_id}",
                                    timeout=10) as response:
            assert json.loads(response.read())[0]["method"] == "fedavg"
        assert child["info"]["artifact_uri"].startswith(moved.resolve().as_uri())
