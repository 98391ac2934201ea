"""FedRTS: posteriors by hand, index-only uploads, Thompson sampling, fixed layer sizes, resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import fedprune
from fedprune import comm
from fedprune import masks as M
from fedprune.contracts import ClientContext, ClientResult, RoundPlan
from fedprune.engine.config import MethodSettings, RunConfig
from fedprune.engine.parts import MethodParts, build_parts
from fedprune.errors import FedpruneError
from fedprune.ops.layers import growth_gradients
from fedprune.registry import Method
from fedprune.seeding import numpy_generator, torch_generator
from fedprune.testing import (
    TinyFederation,
    check_method,
    check_strategy,
    host_plugin_manager,
    tiny_config,
    tiny_simulation,
)
from fedprune_plugins.components.fedrts import FedRTS
from fedprune_plugins.components.sparse import Cosine, GradientGrowth, Magnitude


@pytest.fixture
def pm():
    """fedprune's own plugins (fedrts is one, through its entry point)."""
    return host_plugin_manager()


class Rate(fedprune.Schedule):
    """A fixed rate; adjusting or not."""

    def __init__(self, rate: float, adjusting: bool) -> None:
        self.value, self.adjusting = rate, adjusting

    def fraction(self, round, total_rounds):
        return self.value if self.adjusting else 0.0

    def rate(self, round, total_rounds):
        return self.value


class Server:
    """The server side a strategy sees: known masks and schedule, seeded generators."""

    def __init__(self, masks, schedule, seed=0):
        self.config, self.seed, self.masks = tiny_config(rounds=10), seed, masks
        self.parts = MethodParts(Method("toy"), MethodSettings(), {
            "schedule": schedule, "pruning_criterion": Magnitude(),
            "growth_criterion": GradientGrowth()})
        self.state: dict = {}

    def generator(self, *keys):
        return torch_generator(self.seed, *keys)

    def numpy_generator(self, *keys):
        return numpy_generator(self.seed, *keys)


ACTIVE = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0], dtype=torch.bool)


def one_round(strategy, server, uploads, aggregate):
    """Fold ``uploads`` [(samples, weights, index or None)] and aggregate into new masks."""
    plan = strategy.plan(server, 1)
    strategy.begin_round(server, plan)
    for client, (samples, weights, index) in enumerate(uploads):
        payload = {} if index is None else {"w/index": torch.tensor(index, dtype=torch.int32)}
        strategy.fold(server, plan, client, samples, {"w": torch.tensor(weights)},
                      ClientResult(payload=payload))
    return plan, strategy.server_masks(server, plan, {"w": torch.tensor(aggregate)}, {})


# Two clients (30 and 10 samples, p = 0.75 / 0.25), K = 5 active of 8, rate 0.4: K - kappa =
# floor(0.4 * 5) = 2, kappa = 3. Top-3 |w| among active: client A {0, 1, 2}, client B
# {2, 3, 4}, aggregate {0, 3, 4}.
CLIENTS = [(30, [5., 4., 3., 2., 1., 0., 0., 0.]), (10, [1., 2., 3., 4., 5., 0., 0., 0.])]
AGGREGATE = [3., 1., 2., 5., 4., 0., 0., 0.]
CLIENT_X = torch.tensor([.75, .75, 1., .25, .25])  # sum_n p_n X^n on the active positions
AGGREGATE_X = torch.tensor([1., 0., 0., 1., 1.])


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_posteriors_after_an_inner_round_match_a_hand_computation(gamma):
    strategy = FedRTS(gamma=gamma)
    server = Server({"w": ACTIVE.clone()}, Rate(0.4, adjusting=False))
    plan, masks = one_round(strategy, server, [(n, w, None) for n, w in CLIENTS], AGGREGATE)
    assert not plan.adjusting and torch.equal(masks["w"], ACTIVE)
    x = gamma * AGGREGATE_X + (1 - gamma) * CLIENT_X  # gamma weighs the aggregate (Alg. 2)
    assert torch.allclose(strategy.alpha["w"][:5], 1 + 10 * x)
    assert torch.allclose(strategy.beta["w"][:5], 1 + 10 * (1 - x))
    assert torch.equal(strategy.alpha["w"][5:], torch.ones(3))  # inactive: no outcome
    assert torch.equal(strategy.beta["w"][5:], torch.ones(3))


def test_an_adjustment_round_adds_uploaded_indices_and_samples_exactly_k():
    strategy = FedRTS(sampling="mean")
    server = Server({"w": ACTIVE.clone()}, Rate(0.4, adjusting=True))
    uploads = [(30, CLIENTS[0][1], [5, 6]), (10, CLIENTS[1][1], [6])]
    plan, masks = one_round(strategy, server, uploads, AGGREGATE)
    assert dict(plan.counts) == {"w": 2}  # K - kappa
    # inactive: X^n = 1[uploaded], X^agg = 0.5: X = 0.25 + 0.5 * sum_n p_n X^n
    x = torch.cat([0.5 * AGGREGATE_X + 0.5 * CLIENT_X, torch.tensor([.625, .75, .25])])
    assert torch.allclose(strategy.alpha["w"], 1 + 10 * x)
    assert torch.allclose(strategy.beta["w"], 1 + 10 * (1 - x))
    # w/o TS: top-5 posterior means; 3, 4 and 5 tie at 7.25 / 12, so the current links 3 and 4
    # stay and one place is left for 5; 1 and 2 leave
    assert masks["w"].nonzero().flatten().tolist() == [0, 3, 4, 5, 6]


def test_thompson_sampling_is_reproducible_from_the_seed_and_differs_across_seeds():
    masks = {"a": torch.rand(20, 10, generator=torch_generator(0, "m")) < 0.3}

    def sample(seed, round=5):
        strategy = FedRTS()
        strategy.alpha = {"a": torch.full((20, 10), 2.0)}
        strategy.beta = {"a": torch.full((20, 10), 2.0)}
        return strategy.sample(Server(masks, Rate(0.2, True), seed), round)["a"]

    first = sample(0)
    assert torch.equal(first, sample(0))
    assert not torch.equal(first, sample(1)) and not torch.equal(first, sample(0, round=6))
    assert int(first.sum()) == int(masks["a"].sum())


def toy_context(counts, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    params = dict(model.named_parameters())
    masks = {"0.weight": torch.rand(8, 2, 3, 3) < 0.5}
    M.apply_masks(params, masks)
    parts = MethodParts(Method("toy"), MethodSettings(), {"growth_criterion": GradientGrowth()})
    x, y = torch.randn(4, 2, 6, 6), torch.randint(3, (4,))
    return ClientContext(
        model=model, params=params, prunable={"0.weight": model[0]}, masks=masks,
        plan=RoundPlan(1, counts), client=0, samples=10, total_steps=1, lr=0.1, lr0=0.1,
        parts=parts, config=tiny_config(), gradient_batch=lambda: (x, y),
    )


def test_clients_upload_the_indices_of_their_top_inactive_gradients_only():
    ctx = toy_context({"0.weight": 7})
    x, y = ctx.gradient_batch()
    grad = growth_gradients(ctx.model, ctx.prunable, x, y)["0.weight"].abs().flatten()
    mask = ctx.masks["0.weight"].flatten()
    payload = FedRTS().client_end(ctx).payload
    assert set(payload) == {"0.weight/index"} and payload["0.weight/index"].dtype == torch.int32
    index = payload["0.weight/index"].long()
    assert len(index) == 7 and not mask[index].any()
    expected = torch.topk(torch.where(mask, -1.0, grad), 7).indices
    assert sorted(index.tolist()) == sorted(expected.tolist())
    assert comm.payload_bytes(payload) == 7 * 4  # four bytes per index, no values
    assert FedRTS().client_end(toy_context({})).payload == {}  # inner rounds: nothing


def test_layers_keep_exactly_k_links_masks_change_and_new_links_start_at_zero(pm):
    sim = tiny_simulation("fedrts", pm, rounds=4)
    targets, changed = dict(sim.prepared.targets), 0
    for r in range(1, 5):
        before = dict(sim.prepared.masks)
        sim.step(r, sim.prepared.sample_clients(r))
        for name, mask in sim.prepared.masks.items():
            assert int(mask.sum()) == targets[name]
            grown = mask & ~before[name]
            changed += int(grown.sum())
            assert not sim.prepared.state[name][grown].any()
    assert changed > 0
    assert set(sim.strategy.alpha) == set(targets)
    assert float(sim.strategy.alpha["7.weight"].max()) > 1


def test_upload_bytes_grow_by_four_per_uploaded_index(pm):
    sim = tiny_simulation("fedrts", pm, rounds=3, options={"cosine.interval": 2})
    inner = sim.step(1, sim.prepared.sample_clients(1))["round_upload_bytes"]
    counts = sim.strategy.plan(sim.prepared, 2).counts
    free = {n: int((~m).sum()) for n, m in sim.prepared.masks.items()}
    outer = sim.step(2, sim.prepared.sample_clients(2))["round_upload_bytes"]
    clients = sim.config.clients_per_round
    assert sum(counts.values()) > 0
    assert outer - inner == 4 * clients * sum(min(k, free[n]) for n, k in counts.items())


def test_kappa_follows_the_schedule_rate_between_adjustments(pm):
    sim = tiny_simulation("fedrts", pm, rounds=20, options={"cosine.interval": 10})
    schedule = sim.prepared.parts.need(fedprune.Schedule)
    for r in (3, 10):
        rate = schedule.rate(r, 20)
        expected = {n: math.floor(rate * int(m.sum())) for n, m in sim.prepared.masks.items()}
        assert FedRTS.explore_counts(sim.prepared, r) == expected
    assert not sim.strategy.plan(sim.prepared, 3).counts
    assert dict(sim.strategy.plan(sim.prepared, 10).counts) == FedRTS.explore_counts(
        sim.prepared, 10)


def test_state_dict_round_trips_and_a_resumed_run_continues_identically(pm):
    whole = tiny_simulation("fedrts", pm, rounds=4)
    for r in range(1, 5):
        whole.step(r, whole.prepared.sample_clients(r))
    first = tiny_simulation("fedrts", pm, rounds=4)
    for r in (1, 2):
        first.step(r, first.prepared.sample_clients(r))
    checkpoint = copy.deepcopy(first.state_dict())
    resumed = tiny_simulation("fedrts", pm, rounds=4)
    resumed.load_state_dict(checkpoint)
    for name in checkpoint["strategy"]["alpha"]:
        assert torch.equal(resumed.strategy.alpha[name], first.strategy.alpha[name])
    for r in (3, 4):
        resumed.step(r, resumed.prepared.sample_clients(r))
    for name, mask in whole.prepared.masks.items():
        assert torch.equal(resumed.prepared.masks[name], mask)
        assert torch.equal(resumed.strategy.beta[name], whole.strategy.beta[name])
    for name, tensor in whole.prepared.state.items():
        assert torch.equal(resumed.prepared.state[name], tensor)


def test_recipe_and_strategy_meet_the_contracts(pm, tmp_path):
    method = pm.registry.method("fedrts")
    assert (method.strategy, method.schedule) == ("fedrts_adjust", "cosine")
    assert (method.pruning_criterion, method.growth_criterion) == ("magnitude", "gradient")
    parts = build_parts(pm.registry, method, RunConfig())
    strategy, schedule = parts.strategy, parts.need(fedprune.Schedule)
    assert isinstance(strategy, FedRTS) and isinstance(schedule, Cosine)
    assert (strategy.gamma, strategy.strength, strategy.sampling) == (0.5, 10.0, "thompson")
    assert (schedule.alpha, schedule.interval, schedule.stop_round(500)) == (0.4, 10, 300)
    assert not parts.settings.prune_classifier and parts.settings.init == "random"
    check_strategy(pm.registry.get("fedrts_adjust", "strategy"), pm=pm, tmp=tmp_path / "s")
    check_method("fedrts", TinyFederation(pm, tmp_path / "m"))


@pytest.mark.parametrize("options", [{"gamma": 2}, {"strength": -1}, {"sampling": "ucb"},
                                     {"inactive_outcome": -0.1}])
def test_bad_options_are_refused(options):
    with pytest.raises(FedpruneError, match="fedrts_adjust"):
        FedRTS(**options)
