"""The simulation engine: reproducibility, sampling, one shared model, FedAvg arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedprune.bench import BenchPlan, run_bench
from fedprune.contracts import Regularizer, RoundPlan
from fedprune.engine import prepare as prepare_module
from fedprune.engine.config import RunConfig
from fedprune.engine.prepare import measure_memory
from fedprune.engine.training import batches, local_steps
from fedprune.errors import FedpruneError
from fedprune.testing import tiny_simulation

TINY = dict(rounds=3, clients=4, clients_per_round=2, local_steps=2, batch_size=16,
            eval_every=1, partition="iid", options={"cnn.width": 4})


def simulation(pm, digits, method="feddst", seed=0, **overrides):
    config = RunConfig(**{**TINY, **overrides})
    return tiny_simulation(method, pm, config=config, data=digits, seed=seed)


@pytest.mark.parametrize("method", ["fedavg", "feddst", "prunefl"])
def test_same_seed_same_weights_and_metrics(pm, digits, method):
    a, b = simulation(pm, digits, method), simulation(pm, digits, method)
    ra, rb = a.run(), b.run()
    assert ra["history"] == rb["history"]
    for name, tensor in a.prepared.state.items():
        assert torch.equal(tensor, b.prepared.state[name]), name


def test_different_seeds_differ(pm, digits):
    a, b = simulation(pm, digits, "fedavg", seed=0), simulation(pm, digits, "fedavg", seed=1)
    a.run(), b.run()
    assert not torch.equal(a.prepared.state["0.weight"], b.prepared.state["0.weight"])


def test_clients_are_sampled_without_replacement(pm, digits, monkeypatch):
    sim = simulation(pm, digits, "fedavg", clients=4, clients_per_round=4, rounds=2)
    seen = []
    original = sim.step
    def spy(r, clients):
        seen.append(clients)
        return original(r, clients)

    monkeypatch.setattr(sim, "step", spy)
    sim.run()
    assert all(sorted(c) == [0, 1, 2, 3] for c in seen)


def test_one_model_object_serves_every_client(pm, digits, monkeypatch):
    sim = simulation(pm, digits, "fedavg", clients=4, clients_per_round=4, rounds=1)
    loads = []
    model = sim.prepared.model
    real = model.load_state_dict
    def spy(*args, **kwargs):
        loads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "load_state_dict", spy)
    sim.run()
    assert sim.prepared.trainer.model is model
    assert len(loads) == 4 + 1  # four clients, one evaluation


def test_fedavg_round_is_the_sample_weighted_average(pm, digits):
    sim = simulation(pm, digits, "fedavg", clients=2, clients_per_round=2, rounds=1)
    start = {k: v.clone() for k, v in sim.prepared.state.items()}
    trained = []
    for client in (0, 1):
        update = sim.prepared.trainer.train(client, start, None, RoundPlan(1), 0.05)
        trained.append(({k: v.clone() for k, v in update.state.items()}, update.samples))
    sim.prepared.state = start
    sim.step(1, [0, 1])
    total = sum(n for _, n in trained)
    expected = sum(s["0.weight"].double() * n for s, n in trained) / total
    assert torch.allclose(sim.prepared.state["0.weight"].double(), expected, atol=1e-6)


def test_masked_methods_keep_density_and_zeros(pm, digits):
    sim = simulation(pm, digits, "feddst", rounds=4, options={"cnn.width": 4,
                                                              "cosine.interval": 1})
    targets = {n: int(m.sum()) for n, m in sim.prepared.masks.items()}
    result = sim.run()
    assert {n: int(m.sum()) for n, m in sim.prepared.masks.items()} == targets
    for name, mask in sim.prepared.masks.items():
        assert torch.all(sim.prepared.state[name][~mask] == 0)
    assert abs(result["density"] - 0.2) < 0.01


def test_local_steps_and_epochs():
    config = RunConfig(local_epochs=2, batch_size=10)
    assert local_steps(25, config) == 6
    assert local_steps(25, RunConfig(local_steps=7)) == 7
    gen = torch.Generator().manual_seed(0)
    got = list(batches(np.arange(25), 10, 6, gen))
    assert [len(b) for b in got] == [10, 10, 5, 10, 10, 5]
    assert sorted(np.concatenate(got[:3]).tolist()) == list(range(25))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(clients=3, clients_per_round=4), "cannot exceed clients"),
        (dict(density=0.0), "density must be greater than 0"),
        (dict(density=1.5), "density must be at most 1"),
        (dict(lr=float("nan")), "lr must be a finite number"),
        (dict(momentum=float("inf")), "momentum must be a finite number"),
        (dict(weight_decay=float("nan")), "weight-decay must be a finite number"),
        (dict(rounds=0), "rounds must be at least 1"),
    ],
)
def test_bad_configs_are_clear_errors(kwargs, message):
    with pytest.raises(FedpruneError, match=message):
        RunConfig(**kwargs)


def test_every_method_gets_the_same_initial_weights(pm, digits, tmp_path, monkeypatch):
    seen = {}
    real = prepare_module.method_model

    def spy(base, parts, example=None):
        model = real(base, parts, example)
        seen[parts.method.name] = ({k: v.clone() for k, v in model.state_dict().items()}, base)
        return model

    monkeypatch.setattr(prepare_module, "method_model", spy)
    config = RunConfig(**{**TINY, "rounds": 1})
    run_bench(pm, BenchPlan(("fedavg", "feddst"), (0,), (config,)), tmp_path)
    (wa, ba), (wb, bb) = seen["fedavg"], seen["feddst"]
    assert ba is bb  # one federation per seed: the same partition and base model
    for name in wa:  # feddst's copy is masked afterwards; before masking they are identical
        assert torch.equal(wa[name], wb[name]), name


def test_trainer_skips_unused_machinery(pm, digits):
    sim = simulation(pm, digits, "fedavg")
    trainer = sim.prepared.trainer
    assert trainer.regularizer is None and trainer.growth is None
    assert sim.prepared.parts.one(Regularizer) is None


@pytest.mark.parametrize("method", ["fedmef", "fedrts", "fedtiny", "prunefl+prunefl_adaptive"])
def test_measuring_memory_never_changes_results(pm, digits, method):
    """The measurement trains the run's own model for a step and puts everything back."""
    plain, measured = simulation(pm, digits, method), simulation(pm, digits, method)
    report = measure_memory(measured.prepared, measured.prepared.federation.memory_batch())
    report = report.as_dict()
    assert report["activation_bytes"] > 0 and report["total_bytes"] > report["params_bytes"]
    assert plain.run()["history"] == measured.run()["history"]
    for name, tensor in plain.prepared.state.items():
        assert torch.equal(tensor, measured.prepared.state[name]), name
