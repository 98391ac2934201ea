"""Mask invariants, as properties over random shapes, densities and training sequences."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprune import masks as M
from fedprune.engine.aggregate import Aggregator

shape = st.one_of(
    st.tuples(st.integers(1, 16), st.integers(1, 16)),
    st.tuples(
        st.integers(1, 12), st.integers(1, 8), st.sampled_from([1, 3]), st.sampled_from([1, 3])
    ),
)
shapes = st.lists(shape, min_size=1, max_size=5).map(
    lambda ss: {f"layer{i}.weight": torch.Size(s) for i, s in enumerate(ss)}
)
density = st.floats(0.01, 1.0)
FAST = settings(max_examples=60, deadline=None)


@FAST
@given(shapes, density, st.sampled_from(["erk", "uniform"]), st.integers(0, 2**16))
def test_masks_are_bool_shaped_and_hit_the_target(shapes, d, dist, seed):
    densities = M.DISTRIBUTIONS[dist](shapes, d)
    assert all(0 <= v <= 1 for v in densities.values())
    counts = M.target_counts(shapes, densities)
    masks = M.random_masks(shapes, counts, torch.Generator().manual_seed(seed))
    for name, mask in masks.items():
        assert mask.dtype == torch.bool and mask.shape == shapes[name]
        assert int(mask.sum()) == counts[name]
    total = sum(math.prod(s) for s in shapes.values())
    # within one element per layer of the target (plus the at-least-one-weight floor)
    floor = sum(1 for n, s in shapes.items() if densities[n] * math.prod(s) < 0.5)
    assert abs(sum(counts.values()) - d * total) <= len(shapes) + floor


@FAST
@given(shapes, st.floats(0.05, 0.95))
def test_erk_makes_a_layer_dense_only_when_it_would_exceed_one(shapes, d):
    densities = M.erk_densities(shapes, d)
    total = sum(math.prod(s) for s in shapes.values())
    kept = sum(densities[n] * math.prod(s) for n, s in shapes.items())
    assert math.isclose(kept, d * total, rel_tol=1e-6)


@FAST
@given(
    st.integers(0, 2**16),
    st.floats(0.05, 0.9),
    st.lists(st.tuples(st.floats(-3, 3), st.booleans()), min_size=1, max_size=8),
)
def test_pruned_weights_stay_exactly_zero_under_masked_sgd(seed, d, steps):
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    params = dict(model.named_parameters())
    shapes = {n: p.shape for n, p in params.items() if p.dim() > 1}
    masks = M.random_masks(shapes, M.target_counts(shapes, M.uniform_densities(shapes, d)), gen)
    M.apply_masks(params, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for scale, nesterov in steps:
        opt.param_groups[0]["nesterov"] = nesterov
        x = torch.randn(4, 6, generator=gen) * scale
        loss = model(x).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        M.mask_gradients(params, masks)
        opt.step()
        M.apply_masks(params, masks)
        for name, mask in masks.items():
            assert torch.all(params[name][~mask] == 0)


client_masks = st.integers(1, 5).flatmap(
    lambda k: st.lists(
        st.lists(st.booleans(), min_size=12, max_size=12), min_size=k, max_size=k
    )
)


@FAST
@given(client_masks, st.lists(st.integers(1, 50), min_size=5, max_size=5), st.integers(0, 99))
def test_aggregation_stays_inside_the_union_of_client_masks(masks, samples, seed):
    gen = torch.Generator().manual_seed(seed)
    template = {"w": torch.zeros(3, 4)}
    global_mask = torch.ones(3, 4, dtype=torch.bool)
    agg = Aggregator(template, {"w": global_mask})
    union = torch.zeros(3, 4, dtype=torch.bool)
    for bits, n in zip(masks, samples, strict=False):
        m = torch.tensor(bits).view(3, 4)
        union |= m
        agg.add({"w": torch.randn(3, 4, generator=gen) * m}, n, {"w": m})
    state, votes = agg.result(template)
    assert torch.all(state["w"][~union] == 0)
    assert torch.all((votes["w"] > 0) == union)


@FAST
@given(st.lists(st.booleans(), min_size=12, max_size=12), st.integers(1, 5), st.integers(0, 99))
def test_identical_client_masks_keep_exactly_that_mask(bits, clients, seed):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.tensor(bits).view(3, 4)
    template = {"w": torch.zeros(3, 4)}
    agg = Aggregator(template, {"w": mask})
    for k in range(clients):
        w = (torch.rand(3, 4, generator=gen) + 0.1) * mask  # non-zero inside the mask
        agg.add({"w": w}, k + 1)
    state, votes = agg.result(template)
    assert torch.equal(state["w"] != 0, mask)
    assert torch.equal(votes["w"] > 0, mask)


def test_sparse_average_is_per_element_over_holders():
    template = {"w": torch.zeros(2)}
    agg = Aggregator(template, {"w": torch.ones(2, dtype=torch.bool)})
    agg.add({"w": torch.tensor([1.0, 0.0])}, 1, {"w": torch.tensor([True, False])})
    agg.add({"w": torch.tensor([3.0, 5.0])}, 3, {"w": torch.tensor([True, True])})
    state, votes = agg.result(template)
    assert torch.allclose(state["w"], torch.tensor([(1 + 9) / 4, 5.0]))
    assert torch.allclose(votes["w"], torch.tensor([1.0, 0.75]))


def test_dense_and_integer_entries_average_plainly():
    template = {"b": torch.zeros(1), "n": torch.zeros((), dtype=torch.long)}
    agg = Aggregator(template, None)
    agg.add({"b": torch.tensor([2.0]), "n": torch.tensor(3)}, 1)
    agg.add({"b": torch.tensor([4.0]), "n": torch.tensor(5)}, 3)
    state, _ = agg.result(template)
    assert torch.allclose(state["b"], torch.tensor([3.5])) and int(state["n"]) == 5


@FAST
@given(st.integers(4, 60), st.floats(0.1, 0.9), st.floats(0, 1), st.integers(0, 999))
def test_prune_and_grow_is_disjoint_and_keeps_the_count(numel, d, frac, seed):
    gen = torch.Generator().manual_seed(seed)
    mask = M.random_masks({"w": torch.Size([numel])}, {"w": max(1, int(d * numel))}, gen)["w"]
    k = math.ceil(frac * int(mask.sum()))
    new, grown = M.prune_and_grow(mask, torch.rand(numel, generator=gen),
                                  torch.randn(numel, generator=gen), k)
    assert int(new.sum()) == int(mask.sum())
    pruned = mask & ~new
    assert not torch.any(pruned & grown)
    assert torch.equal(grown, new & ~mask)
    assert int(grown.sum()) == min(k, int(mask.sum()), int((~mask).sum()))


def test_prune_and_grow_ranks_growth_by_magnitude():
    mask = torch.tensor([True, True, False, False])
    new, grown = M.prune_and_grow(mask, torch.tensor([1.0, 2.0, 0, 0]),
                                  torch.tensor([0, 0, -5.0, 1.0]), 1)
    assert new.tolist() == [False, True, True, False]


@FAST
@given(st.lists(st.floats(0, 1), min_size=3, max_size=30), st.integers(0, 999), st.data())
def test_keep_top_meets_the_count_candidates_first(values, seed, data):
    n = len(values)
    scores = torch.tensor(values)
    candidates = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    count = data.draw(st.integers(0, n))
    kept = M.keep_top(scores, candidates, count)
    assert int(kept.sum()) == count
    if count <= int(candidates.sum()):
        assert not torch.any(kept & ~candidates)
    else:
        assert torch.all(kept[candidates])


def test_keep_top_breaks_ties_by_votes():
    kept = M.keep_top(torch.zeros(4), torch.ones(4, dtype=torch.bool), 2,
                      tiebreak=torch.tensor([0.1, 0.9, 0.5, 0.2]))
    assert kept.tolist() == [False, True, True, False]


def test_reset_optimizer_state_zeroes_momentum_of_grown_weights():
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(4)
    opt.step()
    M.reset_optimizer_state(opt, {"p": p}, {"p": torch.tensor([True, False, True, False])})
    buf = opt.state[p]["momentum_buffer"]
    assert buf.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_prunable_parameters_skip_the_classifier_unless_asked():
    from fedprune.models.cnn import SmallCNN

    model = SmallCNN(10, (1, 8, 8), width=4)
    names = M.prunable_parameters(model)
    assert all(n.endswith("weight") for n in names)
    assert list(names) == ["0.weight", "3.weight", "7.weight"]  # convs; classifier dense
    assert "12.weight" in M.prunable_parameters(model, prune_classifier=True)


# ------------------------------------------------------------------------------------ numerics


def test_a_value_sent_outside_the_senders_mask_does_not_leak():
    template = {"w": torch.zeros(3)}
    agg = Aggregator(template, {"w": torch.ones(3, dtype=torch.bool)})
    agg.add({"w": torch.tensor([1.0, 99.0, 99.0])}, 2, {"w": torch.tensor([True, False, False])})
    agg.add({"w": torch.tensor([3.0, 5.0, 99.0])}, 1, {"w": torch.tensor([True, True, False])})
    state, votes = agg.result(template)
    # sum(n m w) / sum(n m): the 99s were outside their sender's mask
    assert torch.allclose(state["w"], torch.tensor([(2 + 3) / 3, 5.0, 0.0]))
    assert torch.allclose(votes["w"], torch.tensor([1.0, 1 / 3, 0.0]))


def test_float64_scores_are_ranked_at_their_own_precision():
    base = torch.full((4,), 1.0, dtype=torch.float64)
    scores = base + torch.tensor([0.0, 3e-12, 1e-12, 2e-12], dtype=torch.float64)
    assert torch.equal(scores.float(), torch.ones(4))  # one value at float32
    assert M.top_indices(scores, torch.ones(4, dtype=torch.bool), 2).tolist() == [1, 3]
    kept = M.keep_top(scores, torch.ones(4, dtype=torch.bool), 2)
    assert kept.tolist() == [False, True, False, True]
    mask = torch.tensor([True, True, False, False])
    new, _ = M.prune_and_grow(mask, scores, -scores, 1)  # prunes 0 (lowest), grows 3 (|-x|)
    assert new.tolist() == [False, True, False, True]


@FAST
@given(st.integers(4, 60), st.floats(0.1, 0.9), st.floats(0, 1), st.integers(0, 999),
       st.sampled_from([float("nan"), float("inf"), float("-inf")]))
def test_non_finite_scores_never_grow_the_mask(numel, d, frac, seed, bad):
    gen = torch.Generator().manual_seed(seed)
    mask = M.random_masks({"w": torch.Size([numel])}, {"w": max(1, int(d * numel))}, gen)["w"]
    k = math.ceil(frac * int(mask.sum()))
    poison = torch.rand(numel, generator=gen) < 0.5
    prune = torch.rand(numel, generator=gen).masked_fill(poison, bad)
    grow = torch.randn(numel, generator=gen).masked_fill(~poison, bad)
    new, grown = M.prune_and_grow(mask, prune, grow, k)
    assert int(new.sum()) == int(mask.sum())  # never more than the target, whatever the scores
    finite_candidates = ~mask & poison  # grow scores finite only where poisoned for pruning
    if int(finite_candidates.sum()) >= int(grown.sum()):
        assert not torch.any(grown & ~poison)  # non-finite growth scores rank last
    pruned = mask & ~new
    if int((mask & poison).sum()) >= int(pruned.sum()):
        assert not torch.any(pruned & ~poison)  # non-finite prune scores go first
