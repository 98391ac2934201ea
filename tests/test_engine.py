"""The simulation engine: reproducibility, sampling, one shared model, FedAvg arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedprune.bench import run_bench
from fedprune.data.partition import IIDPartitioner
from fedprune.engine.build import build_base_model, build_parts, initial_masks, method_model
from fedprune.engine.client import LocalTrainer, batches, local_steps
from fedprune.engine.config import RunConfig
from fedprune.engine.simulation import Simulation
from fedprune.errors import FedpruneError

TINY = dict(rounds=3, clients=4, clients_per_round=2, local_steps=2, batch_size=16,
            eval_every=1, options={"cnn.width": 4})


def simulation(pm, digits, method="feddst", seed=0, **overrides):
    config = RunConfig(**{**TINY, **overrides})
    parts = build_parts(pm.registry, pm.registry.method(method), config)
    clients = IIDPartitioner().split(digits.train.targets, config.clients,
                                     np.random.default_rng(seed))
    base = build_base_model(pm.registry, config, 10, digits.input_shape, seed)
    model = method_model(base, parts)
    masks = initial_masks(model, parts, config.density, seed)
    return Simulation(parts, config, digits, clients, model, masks, seed)


@pytest.mark.parametrize("method", ["fedavg", "feddst", "prunefl"])
def test_same_seed_same_weights_and_metrics(pm, digits, method):
    a, b = simulation(pm, digits, method), simulation(pm, digits, method)
    ra, rb = a.run(), b.run()
    assert ra["history"] == rb["history"]
    for name, tensor in a.global_state.items():
        assert torch.equal(tensor, b.global_state[name]), name


def test_different_seeds_differ(pm, digits):
    a, b = simulation(pm, digits, "fedavg", seed=0), simulation(pm, digits, "fedavg", seed=1)
    a.run(), b.run()
    assert not torch.equal(a.global_state["0.weight"], b.global_state["0.weight"])


def test_clients_are_sampled_without_replacement(pm, digits, monkeypatch):
    sim = simulation(pm, digits, "fedavg", clients=4, clients_per_round=4, rounds=2)
    seen = []
    original = sim.round
    def spy(r, clients):
        seen.append(clients)
        return original(r, clients)

    monkeypatch.setattr(sim, "round", spy)
    sim.run()
    assert all(sorted(c) == [0, 1, 2, 3] for c in seen)


def test_one_model_object_serves_every_client(pm, digits, monkeypatch):
    sim = simulation(pm, digits, "fedavg", clients=4, clients_per_round=4, rounds=1)
    loads = []
    real = sim.model.load_state_dict
    def spy(*args, **kwargs):
        loads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sim.model, "load_state_dict", spy)
    sim.run()
    assert sim.trainer.model is sim.model
    assert len(loads) == 4 + 1  # four clients, one evaluation


def test_fedavg_round_is_the_sample_weighted_average(pm, digits):
    sim = simulation(pm, digits, "fedavg", clients=2, clients_per_round=2, rounds=1)
    start = {k: v.clone() for k, v in sim.global_state.items()}
    trained = []
    for client in (0, 1):
        from fedprune.seeding import torch_generator

        sim.model.load_state_dict(start)
        update = sim.trainer.train(client, digits.train, sim.client_indices[client], start,
                                   None, {}, 1, torch_generator(0, "client-data", 1, client))
        trained.append(({k: v.clone() for k, v in update.state.items()}, update.samples))
    sim.global_state = start
    sim.round(1, [0, 1])
    total = sum(n for _, n in trained)
    expected = sum(s["0.weight"].double() * n for s, n in trained) / total
    assert torch.allclose(sim.global_state["0.weight"].double(), expected, atol=1e-6)


def test_masked_methods_keep_density_and_zeros(pm, digits):
    sim = simulation(pm, digits, "feddst", rounds=4, options={"cnn.width": 4,
                                                              "cosine.interval": 1})
    targets = {n: int(m.sum()) for n, m in sim.masks.items()}
    result = sim.run()
    assert {n: int(m.sum()) for n, m in sim.masks.items()} == targets
    for name, mask in sim.masks.items():
        assert torch.all(sim.global_state[name][~mask] == 0)
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
        (dict(density=0.0), "density must be in"),
        (dict(density=1.5), "density must be in"),
        (dict(rounds=0), "rounds must be at least 1"),
    ],
)
def test_bad_configs_are_clear_errors(kwargs, message):
    with pytest.raises(FedpruneError, match=message):
        RunConfig(**kwargs)


def test_every_method_gets_the_same_initial_weights(pm, digits, tmp_path, monkeypatch):
    seen = {}
    real = Simulation.__init__

    def spy(self, parts, config, data, clients, model, masks, seed, *rest):
        seen[parts.method.name] = (
            {k: v.clone() for k, v in model.state_dict().items()}, [c.copy() for c in clients])
        real(self, parts, config, data, clients, model, masks, seed, *rest)

    monkeypatch.setattr(Simulation, "__init__", spy)
    config = RunConfig(**{**TINY, "rounds": 1})
    run_bench(pm, ["fedavg", "feddst"], config, [0], tmp_path)
    (wa, ca), (wb, cb) = seen["fedavg"], seen["feddst"]
    assert all(np.array_equal(x, y) for x, y in zip(ca, cb, strict=True))
    for name in wa:  # feddst's copy is masked afterwards; before masking they are identical
        assert torch.equal(wa[name], wb[name]), name


def test_trainer_skips_unused_machinery(pm, digits):
    config = RunConfig(**TINY)
    parts = build_parts(pm.registry, pm.registry.method("fedavg"), config)
    model = build_base_model(pm.registry, config, 10, digits.input_shape, 0)
    trainer = LocalTrainer(model, parts, config)
    assert trainer._lr_fn is None and parts.regularizer is None


def test_measuring_memory_never_changes_results(pm, digits):
    plain, measured = simulation(pm, digits, "fedmef"), simulation(pm, digits, "fedmef")
    report = measured.measure_memory()
    assert report["activation_bytes"] > 0 and report["total_bytes"] > report["params_bytes"]
    assert plain.run()["history"] == measured.run()["history"]
    for name, tensor in plain.global_state.items():
        assert torch.equal(tensor, measured.global_state[name]), name
