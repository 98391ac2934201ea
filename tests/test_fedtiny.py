"""FedTiny: candidate masks, pooled BN statistics, selection by weighted loss, progressive
pruning of the selected layers only, and the FedMef-era ``fedtiny_clean``."""

from __future__ import annotations

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
from fedprune.models.cnn import SmallCNN
from fedprune.models.resnet import resnet18
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
from fedprune_plugins.components.fedtiny import (
    CALIBRATE,
    EVALUATE,
    FedTiny,
    _pack,
    _unpack,
    candidate_masks,
    layer_groups,
    pool_statistics,
    recalibrate,
)
from fedprune_plugins.components.sparse import Cosine, GradientGrowth, Magnitude


@pytest.fixture
def pm():
    """fedprune's own plugins (fedtiny is one, through its entry point)."""
    return host_plugin_manager()


def cnn(bn: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallCNN(3, (1, 8, 8), 4)
    if not bn:
        for i, module in enumerate(model):
            if isinstance(module, nn.BatchNorm2d):
                model[i] = nn.Identity()
    return model


class Server:
    """The server side a strategy sees; ``replies(task, client, payload)`` answers the
    client tasks, which are recorded as ``(task, clients, payload)``."""

    def __init__(self, model, replies=None, schedule=None, rounds=20, **settings):
        self.model, self.replies, self.tasks = model, replies, []
        self.config, self.seed = tiny_config(rounds=rounds, **settings), 0
        self.parts = MethodParts(Method("toy"), MethodSettings(), {
            "schedule": schedule or Cosine(0.2, 1, 1.0), "pruning_criterion": Magnitude(),
            "growth_criterion": GradientGrowth()})
        prunable = M.prunable_parameters(model)
        self.masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in prunable.items()}
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.num_clients = self.config.clients

    def generator(self, *keys):
        return torch_generator(self.seed, *keys)

    def numpy_generator(self, *keys):
        return numpy_generator(self.seed, *keys)

    def run_clients(self, task, clients, payload):
        self.tasks.append((task, list(clients), payload))
        for client in clients:
            samples, reply = self.replies(task, client, payload)
            yield client, samples, reply


# --------------------------------------------------------------------- adaptive BN selection


def test_candidates_keep_the_largest_scores_at_noisy_densities_within_tolerance():
    shapes = {"a": (8, 4, 3, 3), "b": (16, 8, 3, 3), "c": (32, 16)}
    scores = {n: torch.rand(s, generator=torch_generator(1, n)) for n, s in shapes.items()}
    densities = {n: 0.3 for n in shapes}
    pool = candidate_masks(scores, densities, 0.3, 6, 0.5, 0.02, torch_generator(0, "c"))
    assert len(pool) == 6
    for masks in pool:
        assert abs(M.density(masks) - 0.3) <= 0.02 * 0.3
        for name, mask in masks.items():
            assert scores[name][mask].min() > scores[name][~mask].max()  # magnitude top
    layer_densities = {tuple(round(float(m.float().mean()), 3) for m in masks.values())
                       for masks in pool}
    assert len(layer_densities) == 6  # the noise makes them differ
    again = candidate_masks(scores, densities, 0.3, 6, 0.5, 0.02, torch_generator(0, "c"))
    assert all(torch.equal(a[n], b[n]) for a, b in zip(pool, again, strict=True) for n in a)
    with pytest.raises(FedpruneError, match="tolerance"):
        candidate_masks({"a": scores["a"]}, {"a": 0.3}, 0.3, 1, 0.5, 1e-6, torch_generator(0))


def test_bn_statistics_pool_to_the_weighted_mean_and_the_pooled_variance():
    replies = [
        (3, {"bn/0/1.running_mean": torch.tensor([0., 2.]),
             "bn/0/1.running_var": torch.tensor([1., 1.])}),
        (1, {"bn/0/1.running_mean": torch.tensor([4., 2.]),
             "bn/0/1.running_var": torch.tensor([1., 3.])}),
    ]
    pooled = pool_statistics(replies)
    assert torch.allclose(pooled["bn/0/1.running_mean"], torch.tensor([1., 2.]))
    # sum_k p_k (var_k + (mu_k - mean)^2): .75 (1 + 1) + .25 (1 + 9) = 4; .75 + .25 * 3 = 1.5
    assert torch.allclose(pooled["bn/0/1.running_var"], torch.tensor([4., 1.5]))


def test_recalibration_takes_the_batch_statistics_by_forward_passes_only():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    x = torch.randn(5, 1, 6, 6)
    weight = model[0].weight.detach().clone()
    stats = recalibrate(model, [x])
    features = model[0](x).detach()
    assert torch.allclose(stats["1.running_mean"], features.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(stats["1.running_var"], features.var((0, 2, 3)), atol=1e-5)
    assert torch.equal(model[0].weight, weight) and model[1].momentum == 0.1


def crafted(task, client, payload):
    """Client 0 (9 samples) and 1 (1 sample). Per-sample losses: client 0 1.0 and 2.0, client 1
    5.0 and 0.0: the weighted mean picks candidate 0 (1.4 < 1.8), a plain mean of the clients'
    means would pick 1 (3.0 > 1.0)."""
    samples = 9 if client == 0 else 1
    if task == CALIBRATE:
        value = float(client + 1)
        return samples, {"samples": torch.tensor(samples), **{
            f"bn/{c}/{k}": torch.full((4 * 2 ** (i // 2),), value * (c + 1))
            for c in range(2) for i, k in enumerate(
                ["1.running_mean", "1.running_var", "4.running_mean", "4.running_var",
                 "8.running_mean", "8.running_var"])}}
    per_sample = [1.0, 2.0] if client == 0 else [5.0, 0.0]
    return samples, {"samples": torch.tensor(samples),
                     "loss": torch.tensor(per_sample, dtype=torch.float64) * samples,
                     "correct": torch.zeros(2, dtype=torch.int64)}


def test_the_candidate_of_lowest_sample_weighted_loss_is_installed_with_its_statistics():
    server = Server(cnn(), crafted, clients=2, clients_per_round=2)
    strategy = FedTiny(candidates=2)
    strategy.setup(server)
    assert [t for t, _, _ in server.tasks] == [CALIBRATE, EVALUATE]
    _, clients, calibrate = server.tasks[0]
    assert clients == [0, 1]
    pool = _unpack(calibrate, {n: server.state[n] for n in server.masks})
    assert len(pool) == 2 and strategy.selection["candidate"] == 0
    assert strategy.selection["loss"] == pytest.approx([1.4, 1.8])
    assert all(torch.equal(server.masks[n], pool[0][n]) for n in pool[0])
    pooled = pool_statistics(crafted(CALIBRATE, c, {}) for c in (0, 1))
    evaluate = server.tasks[1][2]
    for key, value in pooled.items():
        assert torch.equal(evaluate[key], value)  # clients evaluate with the pooled statistics
        if key.startswith("bn/0/"):
            assert torch.equal(server.state[key[len("bn/0/"):]], value)


def test_without_batchnorm_candidates_are_ranked_by_loss_alone():
    server = Server(cnn(bn=False), crafted, clients=2, clients_per_round=2)
    FedTiny(candidates=2).setup(server)
    assert [t for t, _, _ in server.tasks] == [EVALUATE]


def test_abns_runs_on_the_clients_and_selects_a_candidate_near_the_density(pm):
    sim = tiny_simulation("fedtiny", pm, rounds=2)
    selection = sim.strategy.selection
    assert len(selection["loss"]) == 5
    assert selection["candidate"] == min(range(5), key=selection["loss"].__getitem__)
    assert abs(M.density(sim.prepared.masks) - 0.5) <= 0.02 * 0.5
    assert not torch.equal(sim.prepared.state["1.running_var"], torch.ones(4))


def test_client_tasks_share_the_validation_split_and_answer_per_candidate(pm):
    sim = tiny_simulation("fedtiny", pm, rounds=2, options={"fedtiny_adjust.abns": False})
    payload = {"seed": torch.tensor([7]), **_pack([sim.prepared.masks] * 2)}
    [(_, _, stats)] = list(sim.prepared.run_clients(CALIBRATE, [1], payload))
    assert int(stats["samples"]) == round(0.1 * sim.prepared.client_sizes[1])
    assert torch.equal(stats["bn/0/1.running_mean"], stats["bn/1/1.running_mean"])
    pooled = pool_statistics([(int(stats["samples"]), stats)])
    [(_, _, evaluation)] = list(sim.prepared.run_clients(EVALUATE, [1], {**payload, **pooled}))
    assert evaluation["loss"].shape == (2,) and evaluation["loss"][0] == evaluation["loss"][1]
    assert int(evaluation["samples"]) == int(stats["samples"])


# ------------------------------------------------------------------------ progressive pruning


def test_one_layer_per_adjustment_round_robin_from_back_to_front():
    model = cnn()
    server = Server(model, schedule=Cosine(0.2, 2, 1.0), rounds=14)
    strategy = FedTiny(abns=False)
    plans = [strategy.plan(server, r) for r in range(1, 14)]
    assert [list(p.counts) for p in plans if p.adjusting] == [
        ["7.weight"], ["3.weight"], ["0.weight"]] * 2
    assert all(not p.counts for p in plans[::2])  # odd rounds do not adjust
    entire = FedTiny(abns=False, granularity="entire").plan(server, 2)
    assert list(entire.counts) == list(server.masks)
    assert entire.counts == M.adjustment_counts(server.masks, Cosine(0.2, 2, 1.0).fraction(2, 14))


def test_blocks_are_resnet_stages_or_groups_of_consecutive_layers():
    model = resnet18(10, (3, 32, 32))
    layers = list(M.prunable_parameters(model, prune_classifier=True))
    groups = layer_groups(model, layers, "block")
    assert len(groups) == 4 and sum(groups, []) == layers
    assert groups[0][0] == "conv1.weight" and all(n.startswith("layer1.") for n in groups[0][1:])
    assert groups[1][0] == "layer2.0.conv1.weight" and "layer2.0.downsample.0.weight" in groups[1]
    assert groups[3][-1] == "fc.weight" and all(n.startswith("layer4.") for n in groups[3][:-1])
    small = cnn()
    assert layer_groups(small, ["0.weight", "3.weight", "7.weight"], "block", 2) == [
        ["0.weight", "3.weight"], ["7.weight"]]


def test_only_the_selected_layer_changes_and_grown_weights_are_zero(pm):
    sim = tiny_simulation("fedtiny", pm, rounds=4, options={"fedtiny_adjust.abns": False})
    before = dict(sim.prepared.masks)
    plan = sim.strategy.plan(sim.prepared, 1)
    assert list(plan.counts) == ["7.weight"]
    sim.step(1, sim.prepared.sample_clients(1))
    after = sim.prepared.masks
    for name, mask in after.items():
        assert int(mask.sum()) == int(before[name].sum())
        if name != "7.weight":
            assert torch.equal(mask, before[name])
    grown = after["7.weight"] & ~before["7.weight"]
    assert int(grown.sum()) == plan.counts["7.weight"]
    assert not sim.prepared.state["7.weight"][grown].any()


def toy_context(counts, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(),
                          nn.Linear(8 * 2 * 2, 3))
    params = dict(model.named_parameters())
    masks = {n: torch.rand(params[n].shape) < 0.5 for n in ("0.weight", "2.weight")}
    M.apply_masks(params, masks)
    parts = MethodParts(Method("toy"), MethodSettings(), {"growth_criterion": GradientGrowth()})
    x, y = torch.randn(4, 2, 6, 6), torch.randint(3, (4,))
    return ClientContext(
        model=model, params=params, prunable={"0.weight": model[0], "2.weight": model[2]},
        masks=masks, plan=RoundPlan(1, counts), client=0, samples=10, total_steps=1, lr=0.1,
        lr0=0.1, parts=parts, config=tiny_config(), gradient_batch=lambda: (x, y),
    )


def test_clients_upload_the_top_k_inactive_gradients_of_the_selected_layers_only():
    ctx = toy_context({"2.weight": 9})
    grad = growth_gradients(ctx.model, ctx.prunable, *ctx.gradient_batch())["2.weight"]
    payload = FedTiny().client_end(ctx).payload
    assert payload and all(k.startswith("2.weight/") for k in payload)
    assert payload["2.weight/index"].dtype == torch.int32 and len(payload["2.weight/values"]) == 9
    sent = comm.decode_sparse("2.weight", payload, grad).flatten()
    mask = ctx.masks["2.weight"].flatten()
    top = torch.topk(torch.where(mask, -1.0, grad.abs().flatten()), 9).indices
    assert sorted(sent.nonzero().flatten().tolist()) == sorted(top.tolist())
    assert torch.equal(sent[top], grad.flatten()[top])
    dense = FedTiny(progressive=False).client_end(toy_context({"0.weight": 3, "2.weight": 9}))
    assert set(dense.payload) == {"0.weight", "2.weight"}  # fedtiny_clean: dense gradients


@pytest.mark.parametrize("weighting, expected", [("samples", 2.5), ("clients", 2.0)])
def test_gradients_are_averaged_by_samples_or_plainly(weighting, expected):
    server = Server(cnn())
    strategy = FedTiny(abns=False, weighting=weighting)
    plan = RoundPlan(1, {"7.weight": 1})
    strategy.begin_round(server, plan)
    for samples, value in ((3, 3.0), (1, 1.0)):
        grad = torch.full_like(server.state["7.weight"], value)
        strategy.fold(server, plan, 0, samples, {}, ClientResult(payload={"7.weight": grad}))
    assert torch.allclose(strategy.scores.mean()["7.weight"], torch.tensor(expected))


# ---------------------------------------------------------------------------------- recipes


def test_fedtiny_clean_is_server_adjustment_with_dense_gradients(pm):
    clean = pm.registry.method("fedtiny_clean")
    reference = Method("clean_reference", strategy="server_adjust",
                       pruning_criterion="magnitude", growth_criterion="gradient",
                       schedule="cosine",
                       options={k: v for k, v in clean.options.items()
                                if not k.startswith("fedtiny_adjust.")})

    class Plugin:
        @fedprune.hookimpl
        def fedprune_methods(self):
            return [reference]

    pm.register(Plugin(), name="clean-reference")
    results = []
    for spec in ("fedtiny_clean", "clean_reference"):
        sim = tiny_simulation(spec, pm, rounds=3)
        sim.run()
        results.append(sim)
    assert results[0].adjustments and results[0].adjustments[0]["grown"] > 0
    a, b = (s.prepared for s in results)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert all(torch.equal(a.state[n], b.state[n]) for n in a.state)
    assert results[0].upload_bytes == results[1].upload_bytes


def test_recipes_and_strategy_meet_the_contracts(pm, tmp_path):
    method = pm.registry.method("fedtiny")
    assert (method.strategy, method.schedule) == ("fedtiny_adjust", "cosine")
    assert (method.pruning_criterion, method.growth_criterion) == ("magnitude", "gradient")
    parts = build_parts(pm.registry, method, RunConfig())
    strategy, schedule = parts.strategy, parts.need(fedprune.Schedule)
    assert isinstance(strategy, FedTiny) and strategy.abns and strategy.progressive
    assert (strategy.granularity, strategy.weighting) == ("layer", "samples")
    assert (schedule.alpha, schedule.interval, schedule.stop_round(500)) == (0.1, 10, 100)
    clean = build_parts(pm.registry, pm.registry.method("fedtiny_clean"), RunConfig())
    assert not clean.strategy.abns and not clean.strategy.progressive
    assert clean.settings.regrow_pruned and clean.settings.init == "magnitude"
    check_strategy(pm.registry.get("fedtiny_adjust", "strategy"), pm=pm, tmp=tmp_path / "s")
    federation = TinyFederation(pm, tmp_path / "m")
    for spec in ("fedtiny", "fedtiny_clean"):
        check_method(spec, federation)


@pytest.mark.parametrize("options", [{"granularity": "stage"}, {"weighting": "mean"},
                                     {"candidates": 0}, {"noise": 1.5}, {"validation": 0},
                                     {"abns": "maybe"}])
def test_bad_options_are_refused(options):
    with pytest.raises(FedpruneError, match="fedtiny_adjust"):
        FedTiny(**options)
