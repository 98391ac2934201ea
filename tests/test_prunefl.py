"""PruneFL: the fixed-density recipe and the original adaptive policy (``prunefl_adaptive``)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sparse_components import Recorder, make_simulation, plugin_manager

from fedprune import masks as M
from fedprune.contracts import MaskPolicy
from fedprune.engine.config import RunConfig
from fedprune.errors import FedpruneError
from fedprune.testing import TinyFederation, check_mask_policy, check_method
from fedprune_plugins import prunefl
from fedprune_plugins.components.prunefl import AdaptivePruneFL, objective, reconfigure

FAST = settings(max_examples=40, deadline=None)


# ------------------------------------------------------------------------------- registration


def test_both_variants_are_registered_and_mix():
    registry = plugin_manager().registry
    fixed = registry.method("prunefl")
    assert (fixed.strategy, fixed.pruning_criterion, fixed.growth_criterion,
            fixed.mask_policy) == ("server_adjust", "magnitude", "sqgrad", None)
    adaptive = registry.method("prunefl+prunefl_adaptive")
    assert adaptive.mask_policy == "prunefl_adaptive"
    assert adaptive.growth_criterion == "sqgrad"  # the policy consumes the uploaded g^2
    component = registry.get("prunefl_adaptive", "mask_policy")
    options = component.options()
    assert (options["prune_rate"], options["half_life"], options["init_samples"]) == (
        0.3, 10000.0, 200)
    assert (options["init_window"], options["init_tolerance"], options["cost"]) == (5, 0.1, 1.0)
    assert [c.name for c in prunefl.fedprune_mask_policies()] == ["prunefl_adaptive"]


def test_policy_and_method_meet_the_plugin_contracts(tmp_path):
    pm = plugin_manager()
    check_mask_policy(pm.registry.get("prunefl_adaptive", "mask_policy"),
                      {"init_samples": 32, "init_steps": 2, "init_max_reconfigs": 4})
    federation = TinyFederation(pm, tmp_path)
    result = check_method("prunefl+prunefl_adaptive", federation)  # runs twice: reproducible
    assert 0 < result["density"] <= 1


@pytest.mark.parametrize("options", [
    {"prune_rate": 1.0}, {"half_life": 0}, {"t0": -1}, {"cost": 0}, {"unit": "epoch"},
    {"start": "random"}, {"init_samples": 0}, {"init_tolerance": 0}, {"layer_cost": {"a": 0}},
])
def test_bad_options_are_refused(options):
    with pytest.raises(FedpruneError):
        AdaptivePruneFL(**options)


def test_layer_cost_must_name_a_prunable_layer():
    policy = AdaptivePruneFL(layer_cost={"nope.weight": 2.0})
    with pytest.raises(FedpruneError, match="nope.weight"):
        policy.costs({"a": torch.ones(3, dtype=torch.bool)})


def test_prune_rate_halves_every_half_life():
    policy = AdaptivePruneFL()
    assert policy.rate(0) == 0.3
    assert policy.rate(10000) == pytest.approx(0.15)
    assert policy.rate(20000) == pytest.approx(0.075)


# ---------------------------------------------------------------------------- reconfiguration


@st.composite
def reconfiguration_cases(draw):
    """Layers with distinct magnitudes (so the magnitude-kept set is unambiguous)."""
    sizes = draw(st.lists(st.integers(1, 30), min_size=1, max_size=3))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    masks, weights, importance, costs = {}, {}, {}, {}
    for i, size in enumerate(sizes):
        name = f"layer{i}.weight"
        masks[name] = torch.rand(size, generator=gen) < draw(st.floats(0.1, 1.0))
        magnitude = (torch.randperm(size, generator=gen) + 1).float()
        weights[name] = magnitude * torch.sign(torch.randn(size, generator=gen)) * masks[name]
        importance[name] = torch.rand(size, generator=gen) ** 3  # heavy-tailed, like g^2
        costs[name] = draw(st.sampled_from([0.5, 1.0, 2.0]))
    rate = draw(st.floats(0.0, 0.9))
    fixed = draw(st.sampled_from([0.0, 0.5, 5.0, 50.0]))
    return masks, weights, importance, costs, rate, fixed


def _magnitude_kept(masks, weights, rate):
    kept = {}
    for name, mask in masks.items():
        active = int(mask.sum())
        keep = max(1, active - math.ceil(rate * active)) if active else 0
        order = torch.argsort(torch.where(mask, weights[name].abs(), -1.0), descending=True)
        kept[name] = torch.zeros_like(mask)
        kept[name][order[:keep]] = True
    return kept


@FAST
@given(reconfiguration_cases())
def test_reconfiguration_keeps_the_magnitude_top_and_maximises_the_objective(case):
    masks, weights, importance, costs, rate, fixed = case
    new = reconfigure(masks, weights, importance, rate, costs, fixed)
    kept = _magnitude_kept(masks, weights, rate)
    best = objective(new, importance, costs, fixed)
    ratios = {n: importance[n].double() / costs[n] for n in masks}
    for name in masks:
        assert new[name].shape == masks[name].shape and new[name].dtype == torch.bool
        assert not (kept[name] & ~new[name]).any()  # the top (1 - d_t) by |w| always stays
        added = new[name] & ~kept[name]
        # Every addition beats the final objective, and nothing left out would raise it.
        assert (ratios[name][added] > best * (1 - 1e-9)).all()
        assert (ratios[name][~new[name]] <= best * (1 + 1e-9)).all()
    assert best >= objective(kept, importance, costs, fixed) * (1 - 1e-12)


@FAST
@given(reconfiguration_cases(), st.floats(0, 10), st.floats(0, 10))
def test_a_larger_fixed_cost_never_shrinks_the_model(case, a, b):
    masks, weights, importance, costs, rate, _ = case
    low, high = sorted((a, b))
    small = reconfigure(masks, weights, importance, rate, costs, low)
    large = reconfigure(masks, weights, importance, rate, costs, high)
    assert M.density(small) <= M.density(large)


@FAST
@given(reconfiguration_cases())
def test_without_importance_a_reconfiguration_only_prunes(case):
    masks, weights, importance, costs, rate, fixed = case
    zero = {n: torch.zeros_like(v) for n, v in importance.items()}
    new = reconfigure(masks, weights, zero, rate, costs, fixed)
    kept = _magnitude_kept(masks, weights, rate)
    for name in masks:
        assert torch.equal(new[name], kept[name])


def test_update_counts_time_in_local_steps_or_rounds():
    """With no importance, a reconfiguration prunes exactly ceil(d_t * active) per layer."""
    masks = {"w": torch.ones(1000, dtype=torch.bool)}
    weights = {"w": torch.arange(1, 1001, dtype=torch.float32)}
    zero = {"w": torch.zeros(1000)}
    by_step = AdaptivePruneFL(half_life=20, unit="step")
    by_step.steps_per_round = 5
    new = by_step.update(masks, weights, zero, {"w": 1}, 4, 10)  # t = 20 steps: d_t = 0.15
    assert int(new["w"].sum()) == 1000 - 150
    by_round = AdaptivePruneFL(half_life=4, unit="round")
    new = by_round.update(masks, weights, zero, {"w": 1}, 4, 10)  # t = 4 rounds: d_t = 0.15
    assert int(new["w"].sum()) == 1000 - 150
    assert by_round.history == [(4, 0.85)]


def test_importance_above_the_objective_is_added_across_layers():
    masks = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([True, False])}
    weights = {"a": torch.tensor([2.0, 1.0, 0.0, 0.0]), "b": torch.tensor([1.0, 0.0])}
    importance = {"a": torch.tensor([1.0, 1.0, 0.0, 9.0]), "b": torch.tensor([1.0, 3.0])}
    costs = {"a": 1.0, "b": 1.0}
    # d_t = 0.5 drops a[1]; kept {a0, b0}: objective 2 / 2 = 1; candidates by ratio:
    # a3 (9) > 1 -> 11/3; b1 (3) <= 11/3 -> stop. a[1] (1) is not re-added.
    new = reconfigure(masks, weights, importance, 0.5, costs, 0.0)
    assert new["a"].tolist() == [True, False, False, True]
    assert new["b"].tolist() == [True, False]
    # A dearer layer a (t = 4): kept cost 4 + 1, objective 2 / 5; by ratio b1 (3) -> 5/6,
    # a3 (9/4) -> 14/10, then a1 (1/4) stops.
    new = reconfigure(masks, weights, importance, 0.5, {"a": 4.0, "b": 1.0}, 0.0)
    assert new["a"].tolist() == [True, False, False, True]
    assert new["b"].tolist() == [True, True]


# ---------------------------------------------------------------------------- initial pruning


class SpyDataset:
    """Wraps a dataset and records every index it is asked for."""

    def __init__(self, data) -> None:
        self.data, self.seen = data, []

    def batch(self, index, train=False, generator=None):
        self.seen.extend(np.asarray(index).tolist())
        return self.data.batch(index, train=train, generator=generator)


def _initial(digits, policy, seed=0, start_model=None):
    sim = make_simulation("prunefl", digits, seed=seed)  # a model, masks and clients to reuse
    model = start_model if start_model is not None else sim.prepared.model
    spy = SpyDataset(digits.train)
    config = RunConfig(local_steps=2, batch_size=16, clients=4, clients_per_round=2)
    generator = torch.Generator().manual_seed(seed)
    clients = sim.prepared.federation.clients
    chosen = policy.initial_client([len(c) for c in clients], config, generator)
    masks = policy.initial(model, sim.prepared.masks, spy, clients[chosen], config, generator)
    return sim, model, masks, spy


def test_initial_pruning_uses_one_clients_small_sample_and_stops_on_the_criterion(digits):
    policy = AdaptivePruneFL(init_samples=50, init_steps=2, init_max_reconfigs=25)
    sim, model, masks, spy = _initial(digits, policy)
    assert set(masks) == set(sim.prepared.masks)
    clients = sim.prepared.federation.clients
    owners = {c for c, ix in enumerate(clients) if set(spy.seen) <= set(ix.tolist())}
    assert len(owners) == 1 and len(set(spy.seen)) <= 50
    d = policy.init_densities
    assert d[0] == 1.0  # the paper starts from the dense model
    reconfigs = len(d) - 1
    assert 1 <= reconfigs <= 25
    settled = [i for i in range(5, len(d)) if abs(d[i] - d[i - 5]) < 0.1 * d[i - 5]]
    if reconfigs < 25:
        assert settled and settled[0] == len(d) - 1  # stopped at the first settled window
    else:
        assert not settled[:-1]
    assert policy.history == [(0, M.density(masks))]
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert (params[name].detach()[~mask] == 0).all()
    assert policy.steps_per_round == 2


def test_initial_pruning_is_reproducible_and_can_restore_the_weights(digits):
    sim = make_simulation("prunefl", digits)
    original = copy.deepcopy(sim.prepared.model)  # masked by the engine at the random ERK mask
    a = AdaptivePruneFL(init_samples=40, init_steps=2, init_max_reconfigs=8)
    b = AdaptivePruneFL(init_samples=40, init_steps=2, init_max_reconfigs=8)
    _, model_a, masks_a, _ = _initial(digits, a, start_model=copy.deepcopy(original))
    _, model_b, masks_b, _ = _initial(digits, b, start_model=copy.deepcopy(original))
    assert all(torch.equal(masks_a[n], masks_b[n]) for n in masks_a)
    for (_, pa), (_, pb) in zip(model_a.named_parameters(), model_b.named_parameters(),
                                strict=True):
        assert torch.equal(pa, pb)
    restore = AdaptivePruneFL(init_samples=40, init_steps=2, init_max_reconfigs=8,
                              keep_init_weights=False, start="mask")
    _, model_c, masks_c, _ = _initial(digits, restore, start_model=copy.deepcopy(original))
    assert restore.init_densities[0] == pytest.approx(M.density(sim.prepared.masks))
    before = dict(original.named_parameters())
    for name, p in model_c.named_parameters():
        expected = before[name].detach() * masks_c[name] if name in masks_c else before[name]
        assert torch.equal(p.detach(), expected)


# ------------------------------------------------------------------------------ in federation


def test_adaptive_run_reports_the_density_it_chose(digits):
    recorder = Recorder()
    options = {"cosine.interval": 1, "cosine.stop": 1.0, "prunefl_adaptive.init_samples": 64,
               "prunefl_adaptive.init_steps": 2, "prunefl_adaptive.init_max_reconfigs": 10}
    sim = make_simulation("prunefl+prunefl_adaptive", digits, recorder=recorder, options=options)
    policy = sim.prepared.parts.one(MaskPolicy)
    result = sim.run()
    assert [r for r, _ in policy.history] == [0, 1, 2, 3]  # initial, then rounds 1..R-1
    reported = [m["metrics"]["density"] for m in recorder.of("fedprune_round_end")]
    assert reported[:3] == pytest.approx([d for _, d in policy.history[1:]])
    assert reported[-1] == pytest.approx(M.density(sim.prepared.masks))
    for name, mask in sim.prepared.masks.items():
        assert (sim.prepared.state[name][~mask] == 0).all()  # nothing outside the mask counts
    assert 0 < result["density"] <= M.density(sim.prepared.masks)


def test_fixed_density_prunefl_keeps_every_layer_at_target_and_grows_zeros(digits):
    sim = make_simulation("prunefl", digits, options={"cosine.interval": 1, "cosine.stop": 1.0})
    target = {n: int(m.sum()) for n, m in sim.prepared.masks.items()}
    changed = False
    for round_ in range(1, 4):
        old = sim.prepared.masks
        sim.step(round_, [0, 1])
        for name, mask in sim.prepared.masks.items():
            assert int(mask.sum()) == target[name]
            grown = mask & ~old[name]
            changed |= bool(grown.any())
            assert (sim.prepared.state[name][grown] == 0).all()
            assert (sim.prepared.state[name][~mask] == 0).all()
    assert changed
