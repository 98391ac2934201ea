"""End to end: `fedprune bench` trains on each fixture dataset through the real loaders."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from dataset_fixtures import make_cifar10, make_cinic10, make_tinyimagenet

from fedprune import cli

FIXTURES = {"cifar10": make_cifar10, "cinic10": make_cinic10, "tinyimagenet": make_tinyimagenet}


@pytest.mark.parametrize("dataset", sorted(FIXTURES))
def test_bench_runs_on_the_fixture_dataset(tmp_path, dataset):
    root = tmp_path / "data"
    FIXTURES[dataset](root)
    out = tmp_path / "out"
    args = [
        "bench", "--methods", "fedavg", "--dataset", dataset, "--data-root", str(root),
        "--model", "cnn", "--rounds", "1", "--clients", "2", "--clients-per-round", "2",
        "--local-steps", "1", "--batch-size", "8", "--output", str(out), "--no-tracking",
        "--threads", "1",
        # A Dirichlet split of 20 images cannot give each of 2 clients its minimum of 10.
        "--partition", "iid",
    ]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in results] == ["ok"]
    assert 0.0 <= results[0]["final_accuracy"] <= 1.0
    assert (root / ".fedprune-cache").is_dir()  # decoded once, into the cache


def test_bench_on_a_missing_dataset_prints_the_download_command(tmp_path):
    args = [
        "bench", "--methods", "fedavg", "--dataset", "cinic10", "--data-root", str(tmp_path),
        "--rounds", "1", "--clients", "2", "--clients-per-round", "2", "--local-steps", "1",
        "--output", str(tmp_path / "out"), "--no-tracking",
    ]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code != 0
    assert f"fedprune data download cinic10 --root {tmp_path}" in result.output
    assert "Traceback" not in result.output


def test_a_paper_preset_runs_with_command_line_overrides(tmp_path):
    root = tmp_path / "data"
    make_cifar10(root)
    out = tmp_path / "out"
    args = [
        "bench", "--preset", "fedmef-cifar10-resnet18", "--methods", "feddst", "--model", "cnn",
        "--data-root", str(root), "--rounds", "1", "--clients", "2", "--clients-per-round", "2",
        "--local-steps", "1", "--batch-size", "8", "--partition", "iid", "--output", str(out),
        "--no-tracking", "--threads", "1",
    ]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    (run,) = json.loads((out / "results.json").read_text())
    config = run["config"]
    assert run["status"] == "ok"
    assert (config["dataset"], config["rounds"], config["clients"]) == ("cifar10", 1, 2)
    assert (config["lr"], config["weight_decay"], config["density"]) == (0.01, 5e-4, 0.1)
    assert config["options"]["cosine.stop"] == 300
