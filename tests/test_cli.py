"""The command line end to end: bench, results.json, failures, bad input, plugins."""

from __future__ import annotations

import json
import types

import pytest
from click.testing import CliRunner

import fedprune
from fedprune.cli import main
from fedprune.options import parse_options


def bench(args, **kw):
    return CliRunner().invoke(main, ["bench", *args], **kw)


def test_bench_writes_results_json(tmp_path, tiny_args):
    out = tmp_path / "out"
    result = bench(["--methods", "fedavg,feddst", "--output", str(out), "--no-tracking",
                    *tiny_args])
    assert result.exit_code == 0, result.output
    assert "fedprune bench" in result.output and "fedavg" in result.output
    records = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in records] == ["fedavg", "feddst"]
    for r in records:
        for key in ("method", "seed", "final_accuracy", "best_accuracy", "density", "rounds",
                    "upload_bytes", "download_bytes", "wall_seconds", "history"):
            assert key in r, key
        assert r["status"] == "ok" and r["rounds"] == 2
        assert [h["round"] for h in r["history"]] == [1, 2]
        assert set(r["history"][0]) == {"round", "accuracy", "loss"}
    assert records[0]["density"] == pytest.approx(1.0)
    assert records[1]["density"] == pytest.approx(0.2, abs=0.01)
    assert records[1]["upload_bytes"] < records[0]["upload_bytes"]


def test_seeds_produce_one_record_each(tmp_path, tiny_args):
    out = tmp_path / "out"
    result = bench(["--seeds", "0,1", "--output", str(out), "--no-tracking", *tiny_args])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in records] == [("fedavg", 0), ("fedavg", 1)]


class Exploding(fedprune.PruningCriterion):
    def scores(self, weight, grad):
        raise RuntimeError("criterion exploded")


explode = types.ModuleType("explode")
explode.fedprune_pruning_criteria = fedprune.hookimpl(
    lambda: [fedprune.Component("exploding", Exploding, "raises")])
explode.fedprune_methods = fedprune.hookimpl(lambda: [fedprune.Method(
    "boom", "fails in round 1", strategy="server_adjust", pruning_criterion="exploding",
    growth_criterion="gradient", schedule="cosine")])


def test_one_failing_method_does_not_cost_the_others(tmp_path, tiny_args, monkeypatch):
    from fedprune import plugins

    real = plugins.get_plugin_manager

    def with_explode(autoload=None):
        pm = real(autoload)
        pm.register(explode, name="explode")
        return pm

    monkeypatch.setattr(plugins, "get_plugin_manager", with_explode)
    out = tmp_path / "out"
    result = bench(["--methods", "boom,fedavg", "--output", str(out), "--no-tracking",
                    "-o", "cosine.interval=1", "-o", "cosine.stop=1.0", *tiny_args])
    assert result.exit_code == 1
    assert "boom d=0.2 seed=0 failed: RuntimeError: criterion exploded" in result.output
    records = json.loads((out / "results.json").read_text())
    assert records[0]["status"] == "failed" and "criterion exploded" in records[0]["error"]
    assert records[1]["status"] == "ok"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "fedavgx"], "unknown method 'fedavgx'"),
        (["--density", "0"], "density must be greater than 0"),
        (["--density", "1.5"], "density must be at most 1"),
        (["--density", "0.1,abc"], "not a number or a comma-separated list"),
        (["--lr", "nan"], "lr must be a finite number"),
        (["--lr", "inf"], "lr must be a finite number"),
        (["--momentum", "nan"], "momentum must be a finite number"),
        (["--weight-decay", "inf"], "weight-decay must be a finite number"),
        (["--seeds", "-1"], "seeds are non-negative integers"),
        (["-o", "min_votes=abc"], "min_votes must be a number"),
        (["-o", "prune_classifier=False"], None),
        (["-o", "prune_classifier=maybe"], "prune_classifier must be true or false"),
        (["--methods", "feddst+fedavg"], "'fedavg' in 'feddst+fedavg' is a method"),
        (["--methods", "fedavg+magnitude"], "is dense"),
        (["--clients", "3", "--clients-per-round", "5"], "cannot exceed clients"),
        (["--methods", "feddst+nothing"], "unknown mixable component 'nothing'"),
        (["-o", "nonsense"], "is not key=value"),
        (["-o", "nocomp.x=1"], "names no registered component"),
        (["-o", "cosine.speed=1"], "has no option speed"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--seeds", "a,b"], "comma-separated list of integers"),
    ],
)
def test_bad_input_is_a_usage_error_on_one_line(tmp_path, args, message):
    result = bench(["--output", str(tmp_path / "out"), "--no-tracking", "--rounds", "1",
                    "--clients", "4", "--clients-per-round", "2", "--local-steps", "1",
                    "-o", "cnn.width=4", *args])
    if message is None:  # a valid spelling: the strict boolean parser accepts it
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_plugins_json_lists_fedavg():
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    infos = json.loads(result.stdout)
    by_name = {i["name"]: i for i in infos}
    assert by_name["fedavg"]["registers"] == {"method": ["fedavg"]}
    for info in infos:
        assert set(info) >= {"name", "distribution", "version", "registers", "status"}
        assert info["status"] == "loaded"


def test_plugins_table_shows_slots():
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0
    assert "growth_criterion: gradient" in result.output and "mixable kinds" in result.output


def test_parse_options_reads_json_values_and_sweeps():
    assert parse_options(["a.b=5", "c.d=0.5", "e.f=true", "g.h=erk"]) == {
        "a.b": [5], "c.d": [0.5], "e.f": [True], "g.h": ["erk"]}
    assert parse_options(["a.b=1,2", 'c.d={"x": 1, "y": 2}']) == {
        "a.b": [1, 2], "c.d": [{"x": 1, "y": 2}]}


def test_a_sweep_runs_every_grid_point_on_the_seeds_shared_federation(tmp_path, tiny_args):
    out = tmp_path / "out"
    result = bench(["--methods", "fedavg,feddst", "--density", "0.1,0.3", "--output", str(out),
                    "--no-tracking", "--no-report", "-o", "cosine.interval=1,2", *tiny_args])
    assert result.exit_code == 0, result.output
    records = json.loads((out / "results.json").read_text())
    runs = {r["key"]: r for r in records}
    # the dense method once per options grid point, at density 1; each sparse one per point
    assert sorted(runs) == sorted(
        [f"fedavg d=1 cosine.interval={i} seed=0" for i in (1, 2)]
        + [f"feddst d={d} cosine.interval={i} seed=0" for d in (0.1, 0.3) for i in (1, 2)])
    for key, record in runs.items():
        assert record["status"] == "ok", key
        assert record["config"]["density"] == pytest.approx(record["density"], abs=0.01), key
    # an option FedAvg ignores leaves its run unchanged: the grid points share data and weights
    a, b = (runs[f"fedavg d=1 cosine.interval={i} seed=0"] for i in (1, 2))
    assert a["history"] == b["history"] and a["final_accuracy"] == b["final_accuracy"]


def test_the_flower_engine_without_flower_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_flower(name, *args, **kw):
        if name in ("flwr", "ray"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_flower)
    result = CliRunner().invoke(main, ["bench", "--engine", "flower", "--rounds", "1",
                                       "--output", str(tmp_path / "out"), "--no-tracking"])
    assert result.exit_code == 2
    assert "pip install 'fedprune[flower]'" in result.output
    assert not (tmp_path / "out" / "results.json").exists()


def test_workers_without_the_flower_engine_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["bench", "--workers", "2", "--rounds", "1",
                                       "--output", str(tmp_path / "out"), "--no-tracking"])
    assert result.exit_code == 2
    assert "--workers applies to --engine flower only" in result.output


def test_help_imports_neither_torch_nor_mlflow():
    """`--help` of every command answers in the time of click, not of torch (about 2 s) or MLflow:
    commands load lazily and their options are declared without the engine."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from fedprune.cli import main\n"
        "for name in [None, *main.list_commands(None)]:\n"
        "    result = CliRunner().invoke(main, [name, '--help'] if name else ['--help'])\n"
        "    assert result.exit_code == 0, (name, result.output)\n"
        "heavy = {'torch', 'torchvision', 'mlflow', 'pandas', 'matplotlib'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
