"""A compressor never costs memory: on every built-in model, ``X+sap`` and ``X+bitact`` save at
most X's footprint, where another op keeps the full tensor anyway too (the compressor shares
that copy or leaves the layer alone, and says which layers it left)."""

from __future__ import annotations

import dataclasses

import pytest

from fedprune.data.synthetic import load_synthetic
from fedprune.engine.config import RunConfig
from fedprune.engine.prepare import make_federation, measure_memory, prepare
from fedprune.plugins import get_plugin_manager

SHAPES = {"cnn": "1,8,8", "cifar_resnet": "3,16,16", "resnet18": "3,16,16",
          "mobilenetv2": "3,16,16"}


@pytest.mark.parametrize("model", sorted(SHAPES))
@pytest.mark.parametrize("base", ["feddst", "feddst+nsconv"])
def test_a_compressor_never_adds_to_the_footprint(model, base):
    pm = get_plugin_manager()
    config = RunConfig(model=model, batch_size=4, density=0.1, partition="iid", clients=2,
                       clients_per_round=1,
                       options={"sap.gamma": 0.7})
    data = load_synthetic(SHAPES[model], 10, size=16, test_size=4)
    federation = make_federation(pm.registry, config, 0, data)
    batch = federation.memory_batch()
    footprint = {}
    for spec in (base, f"{base}+sap", f"{base}+bitact"):
        run = prepare(pm.registry, pm.registry.method(spec),
                      dataclasses.replace(federation, config=config))
        footprint[spec] = measure_memory(run, batch).total_bytes
    assert footprint[f"{base}+sap"] <= footprint[base], footprint
    assert footprint[f"{base}+bitact"] <= footprint[base], footprint
