"""`fedprune memory`: a method's client step, measured on the bench's own pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from fedprune.cli_memory import FIELDS, memory
from fedprune.engine.config import RunConfig
from fedprune.memory import MemoryReport, SavedTensorMeter, measure_training_step
from fedprune.ops.layers import bind_masks
from fedprune_plugins.components.nsconv import NSConv2d

TINY = ["--model", "cnn", "--input-shape", "1,8,8", "--batch-size", "4", "--threads", "1"]


def run(*args):
    return CliRunner().invoke(memory, [*TINY, *args])


def test_json_schema(tmp_path):
    result = run("--methods", "fedavg,feddst,fedmef,fedmef+bitact", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["method"] for r in rows] == ["fedavg", "feddst", "fedmef", "fedmef+bitact"]
    for row in rows:
        assert set(row) == {"method", "accounting", "memory", "skipped"}
        assert row["accounting"] == "measured"
        mem = row["memory"]
        assert tuple(mem) == FIELDS
        assert mem["cuda_peak_bytes"] is None  # CPU
        ints = {k: v for k, v in mem.items() if k != "cuda_peak_bytes"}
        assert all(isinstance(v, int) for v in ints.values())
        assert mem["total_bytes"] == mem["params_bytes"] + mem["activation_bytes"]
        assert mem["params_bytes"] > 0 and mem["activation_bytes"] > 0
    by = {r["method"]: r["memory"] for r in rows}
    assert by["feddst"]["params_bytes"] < by["fedavg"]["params_bytes"]  # sparse storage
    assert by["fedmef"]["activation_bytes"] < by["feddst"]["activation_bytes"]  # SAP, no BN
    assert by["fedmef+bitact"]["activation_bytes"] < by["fedmef"]["activation_bytes"]


def test_table_and_options():
    result = run("--methods", "feddst,fedmef", "--density", "0.3", "-o", "sap.gamma=0.7")
    assert result.exit_code == 0, result.output
    assert "feddst" in result.output and "fedmef" in result.output
    assert "density 0.3" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "fedmeff"], "unknown method 'fedmeff'"),
        (["--methods", "feddst+nope"], "unknown mixable component 'nope'"),
        (["--model", "vgg"], "unknown model 'vgg'"),
        (["--input-shape", "3,32"], "is not C,H,W"),
        (["--input-shape", "3,x,32"], "is not C,H,W"),
        (["--input-shape", "0,8,8"], "is not C,H,W"),
        (["--density", "0"], "density must be greater than 0"),
        (["-o", "sap.gamma=1.5"], "sap.gamma"),
        (["-o", "nope.x=1"], "names no registered component"),
        (["-o", "cnn.depth=3"], "has no option depth"),
    ],
)
def test_usage_errors_are_one_line(args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_model_that_cannot_take_the_shape_fails_cleanly():
    result = run("--input-shape", "1,1,1", "--methods", "fedavg")
    assert result.exit_code == 1
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert "fedavg: one training step of model 'cnn' on input (1, 1, 1)" in line
    assert "Traceback" not in result.output


# ------------------------------------------------------------------- one pipeline with bench

AGREE = ["--rounds", "1", "--clients", "4", "--clients-per-round", "2", "--local-steps", "1",
         "--batch-size", "16", "--threads", "1", "-o", "cnn.width=4"]
SPECS = ["fedavg", "prunefl", "feddst", "fedmef", "prunefl+prunefl_adaptive", "feddst+sap",
         "feddst+bitact", "fedmef+bitact", "feddst+nsconv", "feddst+random"]


def test_memory_agrees_with_the_bench_memory_column_for_every_method(tmp_path):
    """The same pipeline prepares both (prunefl_adaptive's initial pruning included)."""
    from fedprune.cli import main

    methods = ",".join(SPECS)
    result = CliRunner().invoke(memory, ["--methods", methods, "--json", *AGREE])
    assert result.exit_code == 0, result.output
    measured = {r["method"]: r["memory"] for r in json.loads(result.output)}
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", "--methods", methods, "--no-tracking",
                                       "--no-report", "--output", str(out), *AGREE])
    assert result.exit_code == 0, result.output
    for record in json.loads((out / "results.json").read_text()):
        for field in ("params_bytes", "activation_bytes", "total_bytes", "grad_bytes"):
            assert record["memory"][field] == measured[record["method"]][field], (
                record["method"], field)
    adaptive = measured["prunefl+prunefl_adaptive"]["params_bytes"]
    assert adaptive != measured["prunefl"]["params_bytes"]  # its own size, as in the bench


def test_measuring_is_deterministic_and_leaves_the_base_model_alone(pm, digits):
    from fedprune.engine.prepare import make_federation, measure_memory, prepare

    config = RunConfig(clients=4, clients_per_round=2, options={"cnn.width": 4})
    federation = make_federation(pm.registry, config, 0, digits)
    before = {k: v.clone() for k, v in federation.base.state_dict().items()}
    batch = federation.memory_batch()
    first = measure_memory(prepare(pm.registry, pm.registry.method("fedmef"), federation), batch)
    again = measure_memory(prepare(pm.registry, pm.registry.method("fedmef"), federation), batch)
    assert isinstance(first, MemoryReport)
    for name in ("params_bytes", "activation_bytes", "grad_bytes", "optimizer_bytes"):
        assert getattr(first, name) == getattr(again, name)
    assert all(torch.equal(v, before[k]) for k, v in federation.base.state_dict().items())


def test_masks_saved_for_backward_are_model_state_not_activations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    NSConv2d.convert(model[0])
    masks = {"0.weight": torch.rand(8, 3, 3, 3) < 0.3}
    bind_masks(model, masks)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    report = measure_training_step(model, x, y, masks)
    with SavedTensorMeter(exclude=model) as meter:  # the mask counted, for contrast
        nn.functional.cross_entropy(model(x), y).backward()
    assert meter.bytes - report.activation_bytes == masks["0.weight"].nbytes


def test_the_paper_accounting_stores_what_the_fedmef_authors_store():
    def measured(accounting):
        result = run("--methods", "feddst,fedmef", "--accounting", accounting, "--json")
        assert result.exit_code == 0, result.output
        return {r["method"]: r["memory"]["activation_bytes"] for r in json.loads(result.output)}

    ours, paper = measured("measured"), measured("paper")
    assert paper["feddst"] == ours["feddst"]  # nothing of FedDST's changes
    # int32 indices and the kept standardised weights cost more than a 1-bit mask, fp16 less:
    assert paper["fedmef"] != ours["fedmef"]
    result = run("--methods", "fedmef+bitact", "--accounting", "paper")
    assert result.exit_code == 2
    assert "bitact has no place in the 'paper' accounting" in result.output


def test_the_layers_a_compressor_leaves_alone_are_named():
    result = run("--model", "resnet18", "--input-shape", "3,16,16", "--methods", "feddst+sap",
                 "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert "layer1.0.conv1" in row["skipped"]["sap"]
    table = run("--model", "resnet18", "--input-shape", "3,16,16", "--methods", "feddst+sap")
    assert "feddst+sap: sap left" in table.output


def test_random_images_of_many_classes_are_measured_on_a_full_batch():
    """A label-skewed split of 200 classes would leave client 0 a few images: the measured
    batch is a full --batch-size one whatever the classes."""
    def activations(classes):
        result = run("--methods", "feddst", "--num-classes", str(classes), "--batch-size", "64",
                     "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.output)[0]["memory"]["activation_bytes"]

    assert activations(200) == pytest.approx(activations(10), rel=0.05)
