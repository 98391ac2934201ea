"""The memory ablation's measuring core on a tiny CNN: ratios, ordering, and equal building."""

from __future__ import annotations

import gc
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "memory_ablation.py"
TINY = {"cnn.width": 4}
SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True)
def _fast_gc():
    """Each measured step runs gc.collect(); freezing the objects alive now (torch's modules)
    takes them out of every collection, which makes it ~100x cheaper and changes no count."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("memory_ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    # The first optimizer step imports much of torch lazily (once per process); do it here, so
    # that the objects are frozen with the rest and the test times the measuring alone.
    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.ones(1)
    torch.optim.SGD([param], lr=0.1, momentum=0.9).step()
    yield module
    sys.modules.pop(spec.name, None)


def test_ratios_and_footprint_ordering(ablation, pm):
    keys = ("a", "d", "e", "f")
    variants = [v for v in ablation.VARIANTS if v.key in keys]
    rows = ablation.ablate(
        pm, "cnn", SHAPE, variants=variants, gammas=(0.5, 0.9), time_gammas=(0.5,),
        batch_size=4, density=0.1, repeats=1, options=TINY,
    )
    by = {(r["config"], r["gamma"]): r for r in rows}
    assert set(by) == {("a", None)} | {(k, g) for k in keys[1:] for g in (0.5, 0.9)}

    base = by[("a", None)]
    assert base["footprint_ratio"] == base["step_ratio"] == base["wall_ratio"] == 1.0
    for r in rows:
        assert r["total_bytes"] == r["params_bytes"] + r["activation_bytes"]
        assert r["footprint_ratio"] == pytest.approx(r["total_bytes"] / base["total_bytes"])
        timed = r["gamma"] in (None, 0.5)
        assert (r["step_seconds"] is not None) == timed and (r["step_ratio"] is not None) == timed
        assert r["step_seconds"] is None or r["step_seconds"] > 0

    for g in (0.5, 0.9):
        # 1-bit activations and bf16 values never add memory; dropping more never keeps more.
        assert by[("e", g)]["activation_bytes"] <= by[("d", g)]["activation_bytes"]
        assert by[("f", g)]["activation_bytes"] < by[("e", g)]["activation_bytes"]
    for k in keys[1:]:
        assert by[(k, 0.9)]["activation_bytes"] < by[(k, 0.5)]["activation_bytes"]
    # Masked parameters: NSConv's gains and a removed BatchNorm change them, SAP does not.
    assert by[("e", 0.5)]["params_bytes"] == by[("d", 0.9)]["params_bytes"]

    text = ablation.table(rows)
    assert text.count("\n") == len(rows) + 1 and "`fedmef+bitact -o sap.values=bfloat16`" in text


def test_client_is_prepared_by_the_bench_pipeline(ablation, pm):
    """The ablation's client is the one `fedprune memory` measures (one pipeline)."""
    from fedprune.engine.prepare import measure_memory, prepare

    variant = next(v for v in ablation.VARIANTS if v.key == "f")
    run = {"model": "cnn", "batch_size": 4, "density": 0.1, "options": TINY}
    shared = ablation.federation(pm, run, SHAPE, 10, 0)
    client = ablation.build_client(pm, variant, 0.7, shared, run)
    x, y = shared.memory_batch()
    ours = ablation.measure_training_step(client.model, x, y, client.masks)
    method = pm.registry.method(variant.spec)
    import dataclasses

    reference = measure_memory(
        prepare(pm.registry, method, dataclasses.replace(shared, config=client.config)), (x, y))
    assert client.config.options["sap.gamma"] == 0.7
    assert client.config.options["sap.values"] == "bfloat16"
    assert (ours.params_bytes, ours.activation_bytes) == (
        reference.params_bytes, reference.activation_bytes
    )
