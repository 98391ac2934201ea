"""Shared sparse-training parts: prune/grow, votes, optimizer reset, sqgrad, cosine schedule.

Properties are checked on the primitives the methods are made of (`fedprune.masks`) and on
the components of ``plugins/sparse.py`` driven through the real local trainer. The helpers at
the top (a plugin manager with only the method plugins, a tiny simulation, a hook recorder)
are shared by the PruneFL, FedDST and communication tests.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedprune import masks as M
from fedprune.contracts import RoundPlan
from fedprune.engine.client import LocalTrainer
from fedprune.engine.config import MethodSettings, RunConfig
from fedprune.engine.parts import MethodParts
from fedprune.engine.simulation import Simulation
from fedprune.engine.training import batches
from fedprune.errors import FedpruneError
from fedprune.plugins import PluginManager
from fedprune.registry import Method
from fedprune.seeding import torch_generator
from fedprune.testing import EventRecorder, host_plugin_manager, tiny_simulation
from fedprune_plugins import sparse
from fedprune_plugins.components.sparse import Cosine, Magnitude, SquaredGradientGrowth
from fedprune_plugins.components.strategies import ServerAdjust

FAST = settings(max_examples=40, deadline=None)

# ------------------------------------------------------------------------------------ helpers


def plugin_manager() -> PluginManager:
    """fedprune's own plugins only, whatever else is installed."""
    return host_plugin_manager()


Recorder = EventRecorder


def make_simulation(spec, data, recorder=None, seed=0, options=None, **config) -> Simulation:
    """A tiny run of ``spec``: cnn of width 4, 4 IID clients, 2 per round, 2 local steps."""
    settings = dict(rounds=4, clients=4, clients_per_round=2, local_steps=2, batch_size=16,
                    partition="iid", eval_every=100)
    run_config = RunConfig(**{**settings, **config}, options={"cnn.width": 4, **(options or {})})
    return tiny_simulation(spec, plugin_manager(), config=run_config, data=data, seed=seed,
                           recorder=recorder)


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 10)
    )


# ------------------------------------------------------------------------------ prune and grow


@st.composite
def layer_cases(draw):
    numel = draw(st.integers(1, 60))
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=numel, max_size=numel)))
    # Small integer scores force ties, which must not break the counts.
    prune = torch.tensor(draw(st.lists(st.integers(-3, 3), min_size=numel, max_size=numel)))
    grow = torch.tensor(draw(st.lists(st.integers(-3, 3), min_size=numel, max_size=numel)))
    k = draw(st.integers(0, numel))
    return mask, prune.float(), grow.float(), k


@FAST
@given(layer_cases())
def test_prune_and_grow_keeps_the_count_and_disjoint_sets(case):
    mask, prune, grow, k = case
    new, grown = M.prune_and_grow(mask, prune, grow, k)
    pruned = mask & ~new
    expected = min(k, int(mask.sum()), int((~mask).sum()))
    assert int(new.sum()) == int(mask.sum())
    assert int(pruned.sum()) == int(grown.sum()) == expected
    assert not (grown & mask).any()  # growth only among positions inactive before pruning
    assert not (pruned & grown).any()  # a pruned weight is never regrown in the same step
    assert torch.equal(new, (mask & ~pruned) | grown)
    if expected:
        kept, passed_over = prune[mask & new], grow.abs()[~mask & ~grown]
        if kept.numel():
            assert prune[pruned].max() <= kept.min()  # the lowest scores were pruned
        if passed_over.numel():
            assert grow.abs()[grown].min() >= passed_over.max()  # the highest |score| grew


@FAST
@given(
    density=st.floats(0.05, 0.9),
    fraction=st.floats(0.01, 0.6),
    distribution=st.sampled_from(sorted(M.DISTRIBUTIONS)),
    seed=st.integers(0, 2**16),
    clients=st.integers(1, 5),
    min_votes=st.sampled_from([0.0, 0.3, 0.6]),
)
def test_density_never_drifts_through_client_adjustment_and_server_vote(
    density, fraction, distribution, seed, clients, min_votes
):
    """Clients prune/grow k_l per layer; the server votes and re-prunes: targets hold exactly."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"a": torch.Size([4, 2, 3, 3]), "b": torch.Size([8, 4, 3, 3]),
              "c": torch.Size([10, 32])}
    counts = M.target_counts(shapes, M.DISTRIBUTIONS[distribution](shapes, density))
    masks = M.random_masks(shapes, counts, gen)
    k = M.adjustment_counts(masks, fraction)
    samples = torch.randint(1, 50, (clients,), generator=gen).double()
    held = {n: torch.zeros(s, dtype=torch.float64) for n, s in shapes.items()}
    for c in range(clients):
        for name, mask in masks.items():
            weight = torch.randn(shapes[name], generator=gen) * mask
            new, _ = M.prune_and_grow(mask, weight.abs(), torch.randn(shapes[name], generator=gen),
                                      k[name])
            assert int(new.sum()) == counts[name]
            held[name] += samples[c] * new
    for name in masks:
        votes = (held[name] / samples.sum()).float()
        state = torch.randn(shapes[name], generator=gen) * (votes > 0)
        voted = votes > min_votes
        final = M.keep_top(state.abs(), voted, counts[name], tiebreak=votes)
        assert int(final.sum()) == counts[name]
        if int(voted.sum()) >= counts[name]:
            assert not (final & ~voted).any()
        else:
            assert not (voted & ~final).any()


@FAST
@given(
    numel=st.integers(1, 50),
    count=st.integers(0, 50),
    seed=st.integers(0, 2**16),
)
def test_keep_top_ranks_candidates_then_score_then_votes(numel, count, seed):
    count = min(count, numel)
    gen = torch.Generator().manual_seed(seed)
    candidates = torch.rand(numel, generator=gen) < 0.5
    scores = torch.randint(0, 3, (numel,), generator=gen).float()  # many ties
    votes = torch.rand(numel, generator=gen)
    kept = M.keep_top(scores, candidates, count, tiebreak=votes)
    assert int(kept.sum()) == count
    key = list(zip(candidates.tolist(), scores.tolist(), votes.tolist(), strict=True))
    worst_kept = min((key[i] for i in range(numel) if kept[i]), default=None)
    best_dropped = max((key[i] for i in range(numel) if not kept[i]), default=None)
    if worst_kept is not None and best_dropped is not None:
        assert worst_kept >= best_dropped


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), fraction=st.floats(0.05, 0.5), steps=st.integers(1, 3))
def test_grown_weights_are_zero_and_their_momentum_is_reset(seed, fraction, steps):
    model = tiny_net(seed)
    params = dict(model.named_parameters())
    prunable = M.prunable_parameters(model, prune_classifier=True)
    shapes = {n: m.weight.shape for n, m in prunable.items()}
    gen = torch.Generator().manual_seed(seed)
    masks = M.random_masks(shapes, M.target_counts(shapes, M.erk_densities(shapes, 0.3)), gen)
    M.apply_masks(params, masks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        x, y = torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        M.mask_gradients(params, masks)
        optimizer.step()
        M.apply_masks(params, masks)
    # Dense momentum so that a reset is visible: a stale buffer everywhere, as after any
    # earlier mask change.
    for name in masks:
        optimizer.state[params[name]]["momentum_buffer"].add_(1.0)
    counts = M.adjustment_counts(masks, fraction)
    new, grown = {}, {}
    for name, mask in masks.items():
        new[name], grown[name] = M.prune_and_grow(
            mask, params[name].detach().abs(), torch.randn(mask.shape, generator=gen),
            counts[name])
    M.apply_masks(params, new)
    changed = M.changed_positions(masks, new)
    M.reset_optimizer_state(optimizer, params, changed)
    for name in masks:
        assert torch.equal(changed[name], grown[name])
        assert (params[name].detach()[grown[name]] == 0).all()
        assert (optimizer.state[params[name]]["momentum_buffer"][grown[name]] == 0).all()
        assert (params[name].detach()[~new[name]] == 0).all()


# ------------------------------------------------------------------------------------- sqgrad


def _prunefl_parts(**settings) -> MethodParts:
    method = Method("prunefl", strategy="server_adjust", pruning_criterion="magnitude",
                    growth_criterion="sqgrad", schedule="cosine")
    return MethodParts(method, MethodSettings(**settings), {
        "pruning_criterion": Magnitude(), "growth_criterion": SquaredGradientGrowth(),
        "schedule": Cosine(), "strategy": ServerAdjust()})


def _reference_squared_gradients(model, masks, data, indices, steps, config, seed, round_=1):
    """Masked SGD written out by hand, summing g * g of every step into fresh tensors."""
    gen = torch_generator(seed, "client-data", round_, 0)
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(params[n]) for n in masks}
    model.train()
    for index in batches(indices, config.batch_size, steps, gen):
        x, y = data.batch(index, train=True, generator=gen)
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
        with torch.no_grad():
            for (name, p), g in zip(params.items(), grads, strict=True):
                if name in masks:
                    total[name] += g * g
                    g = g * masks[name]
                p.add_(g, alpha=-config.lr)
                if name in masks:
                    p.mul_(masks[name])
    return total


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), steps=st.integers(1, 4), lr=st.floats(0.01, 0.2))
def test_sqgrad_through_local_training_is_the_sum_of_squared_gradients(digits, seed, steps, lr):
    config = RunConfig(local_steps=steps, lr=lr, momentum=0.0, batch_size=16)
    model = tiny_net(seed)
    parts = _prunefl_parts(prune_classifier=True)
    prunable = M.prunable_parameters(model, prune_classifier=True)
    shapes = {n: m.weight.shape for n, m in prunable.items()}
    gen = torch.Generator().manual_seed(seed)
    masks = M.random_masks(shapes, M.target_counts(shapes, M.erk_densities(shapes, 0.4)), gen)
    M.apply_masks(dict(model.named_parameters()), masks)
    indices = np.arange(seed % 1000, seed % 1000 + 64)
    reference_model = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = LocalTrainer(model, parts, config, digits.train, [indices], seed)
    counts = {n: 1 for n in masks}
    update = trainer.train(0, state, masks, RoundPlan(1, counts), lr)
    expected = _reference_squared_gradients(reference_model, masks, digits.train, indices,
                                            steps, config, seed)
    assert set(update.payload) == set(masks)
    for name in masks:
        torch.testing.assert_close(update.payload[name], expected[name], rtol=1e-5, atol=1e-9)


def test_sqgrad_accumulates_since_the_last_reconfiguration(digits):
    """A client's squared gradients of a plain round and of the next adjustment round add up,
    and the sum starts again after it is uploaded."""
    config = RunConfig(local_steps=2, lr=0.05, momentum=0.0, batch_size=16)
    model = tiny_net(3)
    parts = _prunefl_parts(prune_classifier=True)
    prunable = M.prunable_parameters(model, prune_classifier=True)
    shapes = {n: m.weight.shape for n, m in prunable.items()}
    masks = M.random_masks(shapes, M.target_counts(shapes, M.erk_densities(shapes, 0.4)),
                           torch.Generator().manual_seed(3))
    M.apply_masks(dict(model.named_parameters()), masks)
    indices = np.arange(64)
    reference = copy.deepcopy(model)
    trainer = LocalTrainer(model, parts, config, digits.train, [indices], 3)
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    first = trainer.train(0, state0, masks, RoundPlan(1), 0.05)
    assert not first.payload and 0 in trainer.client_states
    state1 = {k: v.clone() for k, v in first.state.items()}
    counts = {n: 1 for n in masks}
    second = trainer.train(0, state1, masks, RoundPlan(2, counts), 0.05)
    expected = _reference_squared_gradients(reference, masks, digits.train, indices, 2, config,
                                            3, round_=1)
    reference.load_state_dict(state1)
    more = _reference_squared_gradients(reference, masks, digits.train, indices, 2, config, 3,
                                        round_=2)
    for name in masks:
        torch.testing.assert_close(second.payload[name], expected[name] + more[name],
                                   rtol=1e-5, atol=1e-9)
    assert 0 not in trainer.client_states  # consumed by the upload


@FAST
@given(steps=st.integers(1, 5), cost=st.floats(0.1, 10), seed=st.integers(0, 2**16))
def test_sqgrad_accumulates_a_separate_buffer(steps, cost, seed):
    gen = torch.Generator().manual_seed(seed)
    weight = nn.Parameter(torch.zeros(3, 4))
    bias = nn.Parameter(torch.zeros(3))
    criterion = SquaredGradientGrowth(cost=cost)
    criterion.load_client_state({})
    criterion.begin({"w": weight, "b": bias})
    expected = torch.zeros(3, 4)
    for _ in range(steps):
        g = torch.randn(3, 4, generator=gen)
        weight.grad, bias.grad = g.clone(), torch.randn(3, generator=gen)
        criterion.after_backward({"w": weight, "b": bias})
        expected += g * g
        weight.grad.zero_()  # reusing the .grad tensor must not touch the accumulator
    assert "b" not in criterion.accumulated  # biases are never scored
    scores = criterion.scores({"w": weight}, {"w": None})
    torch.testing.assert_close(scores["w"], expected / cost)


# ------------------------------------------------------------------------------------- cosine


@FAST
@given(
    alpha=st.floats(0, 1),
    interval=st.integers(1, 12),
    stop=st.one_of(st.floats(0.05, 1.0), st.integers(2, 150).map(float)),
    total=st.integers(1, 150),
)
def test_cosine_schedule_matches_rigl(alpha, interval, stop, total):
    schedule = Cosine(alpha=alpha, interval=interval, stop=stop)
    r_stop = round(stop * total) if stop <= 1 else int(stop)
    previous = math.inf
    for r in range(1, total + 1):
        value = schedule.fraction(r, total)
        if r % interval or r > r_stop or r >= total:
            assert value == 0.0
            continue
        expected = alpha / 2 * (1 + math.cos(math.pi * r / r_stop))
        assert value == pytest.approx(expected, abs=1e-12)
        assert 0.0 <= value <= alpha
        assert value <= previous + 1e-12  # decays over the adjustment rounds
        previous = value


def test_cosine_alpha_zero_never_adjusts():
    schedule = Cosine(alpha=0.0, interval=1, stop=1.0)
    assert all(schedule.fraction(r, 50) == 0.0 for r in range(1, 51))


@pytest.mark.parametrize("options", [{"alpha": 1.5}, {"interval": 0}, {"stop": 0}])
def test_cosine_refuses_bad_options(options):
    with pytest.raises(FedpruneError):
        Cosine(**options)


def test_components_are_registered_by_kind():
    assert [c.name for c in sparse.fedprune_pruning_criteria()] == ["magnitude"]
    assert all(isinstance(c.factory, str) for c in sparse.fedprune_growth_criteria())
    assert [c.name for c in sparse.fedprune_growth_criteria()] == ["gradient", "random", "sqgrad"]
    assert [c.name for c in sparse.fedprune_schedules()] == ["cosine"]
