"""FedMef: the BaE regularizer, the recipe, and its adjustment rounds in the engine."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import fedprune
import fedprune.comm
from fedprune import masks as M
from fedprune.contracts import (
    ActivationCompressor,
    ClientContext,
    Regularizer,
    RoundPlan,
    Schedule,
)
from fedprune.engine.config import MethodSettings, RunConfig
from fedprune.engine.parts import MethodParts, build_parts
from fedprune.engine.prepare import make_federation, prepare
from fedprune.engine.simulation import Simulation
from fedprune.errors import FedpruneError
from fedprune.ops.layers import growth_gradients
from fedprune.registry import Method
from fedprune_plugins.components.bae import BaE
from fedprune_plugins.components.sparse import Magnitude

TINY = {"cnn.width": 4}


def toy_context(counts, criterion=None, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(2, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    params = dict(model.named_parameters())
    masks = {"0.weight": torch.rand(8, 2, 3, 3) < 0.5}
    M.apply_masks(params, masks)
    parts = MethodParts(Method("toy"), MethodSettings(),
                        {"pruning_criterion": criterion or Magnitude()})
    return ClientContext(
        model=model, params=params, prunable={}, masks=masks, plan=RoundPlan(1, counts),
        client=0, samples=10, total_steps=10, lr=0.05, lr0=0.05, parts=parts,
        config=RunConfig(), gradient_batch=lambda: (torch.zeros(0), torch.zeros(0)),
    )


def fedmef_setup(pm, digits, density=0.2, seed=0, **config):
    """A prepared FedMef run on 4 IID clients: (config, parts, model, masks, run)."""
    options = {**TINY, **config.pop("options", {})}
    settings = dict(clients=4, clients_per_round=2, partition="iid")
    config = RunConfig(model="cnn", density=density, options=options, **{**settings, **config})
    federation = make_federation(pm.registry, config, seed, digits)
    run = prepare(pm.registry, pm.registry.method("fedmef"), federation)
    return config, run.parts, run.model, run.masks, run


# ------------------------------------------------------------------------------------- recipe


def test_recipe_and_regularizer_are_registered(pm):
    method = pm.registry.method("fedmef")
    assert method.strategy == "server_adjust" and method.regularizer == "bae"
    assert method.model_transforms == ("nsconv",) and method.activation_compressors == ("sap",)
    assert (method.pruning_criterion, method.growth_criterion) == ("magnitude", "gradient")
    assert method.options["server_adjust.upload"] == "topk"
    parts = build_parts(pm.registry, method, RunConfig())
    assert parts.strategy.upload == "topk" and isinstance(parts.one(Regularizer), BaE)
    schedule = parts.one(Schedule)
    assert (schedule.alpha, schedule.interval) == (0.4, 10)
    assert schedule.stop_round(500) == 300
    assert parts.many(ActivationCompressor)[0].gamma == method.options["sap.gamma"]
    assert (parts.settings.distribution, parts.settings.init) == ("erk", "random")
    assert pm.registry.get("bae", "regularizer").options() == {
        "lam": 1.0, "form": "norm", "ramp": 0.0, "budget": True}


@pytest.mark.parametrize("options", [{"lam": -1}, {"lam": float("nan")}, {"form": "cubed"},
                                     {"ramp": -1}, {"budget": "maybe"}])
def test_bad_options_are_refused(options):
    with pytest.raises(FedpruneError, match="bae"):
        BaE(**options)


# ---------------------------------------------------------------------------------------- BaE


def test_theta_low_is_exactly_the_k_smallest_active_weights():
    ctx = toy_context({"0.weight": 7})
    bae = BaE()
    bae.begin(ctx)
    marked = bae.marked()["0.weight"]
    mask, w = ctx.masks["0.weight"], ctx.params["0.weight"].detach().abs()
    assert int(marked.sum()) == 7 and not (marked & ~mask).any()
    expected = torch.sort(w[mask]).values[:7]
    assert torch.equal(torch.sort(w[marked]).values, expected)


def test_theta_low_follows_the_methods_pruning_criterion():
    class Largest(fedprune.PruningCriterion):
        def scores(self, weight, grad):
            assert grad is None  # fixed for the round: no gradient at begin
            return -weight.abs()

    ctx = toy_context({"0.weight": 5}, Largest())
    bae = BaE()
    bae.begin(ctx)
    marked = bae.marked()["0.weight"]
    mask, w = ctx.masks["0.weight"], ctx.params["0.weight"].detach().abs()
    assert torch.equal(torch.sort(w[marked]).values, torch.sort(w[mask]).values[-5:])


def test_squared_form_is_lambda_times_squared_norm_and_fixed_for_the_round():
    ctx = toy_context({"0.weight": 6})
    bae = BaE(lam=0.3, form="squared")
    bae.begin(ctx)
    marked = bae.marked()["0.weight"]
    w = ctx.params["0.weight"]
    penalty = bae.penalty(ctx.model)
    assert torch.allclose(penalty, 0.3 * w.detach()[marked].square().sum())
    penalty.backward()  # the gradient reaches exactly the marked weights
    assert torch.allclose(w.grad, 0.6 * w.detach() * marked)
    with torch.no_grad():
        w.mul_(0.5)  # the marked set stays the same while the weights change
    assert torch.equal(bae.marked()["0.weight"], marked)
    assert math.isclose(bae.norm(), float(w.detach()[marked].norm()), rel_tol=1e-6)


def test_norm_form_is_the_proximal_step_of_the_unsquared_norm():
    ctx = toy_context({"0.weight": 6})
    bae = BaE(lam=0.5, budget=False)
    bae.begin(ctx)
    marked = bae.marked()["0.weight"]
    w = ctx.params["0.weight"]
    before = w.detach().clone()
    assert bae.penalty(ctx.model) is None  # not through the loss: a prox step after the step
    norm = float(before[marked].norm())
    lr = 0.4 * norm / 0.5  # a pull of 40% of the norm
    bae.after_step(lr)
    expected = before * (1 - lr * 0.5 / norm)
    assert torch.allclose(w.detach()[marked], expected[marked])
    assert torch.equal(w.detach()[~marked], before[~marked])  # only theta_low moves
    bae.after_step(lr=100.0)  # a pull beyond the norm lands exactly on 0, not past it
    assert not w.detach()[marked].any()


def test_the_budget_floor_lets_the_pull_empty_each_layer_in_half_the_budget():
    ctx = toy_context({"0.weight": 6})
    bae = BaE(lam=1e-9)
    bae.begin(ctx)
    norm = bae.norm()
    w = ctx.params["0.weight"]
    for _ in range(ctx.total_steps // 2):
        bae.after_step(ctx.lr)
    assert bae.norm() < 1e-6 * norm  # empty up to rounding
    bae.after_step(ctx.lr)
    assert not w.detach()[bae.marked()["0.weight"]].any()  # and held exactly at 0


def test_the_ramp_grows_the_coefficient_per_step_up_to_lambda():
    bae = BaE(lam=0.01, ramp=1e-4, budget=False)
    bae.begin(toy_context({"0.weight": 6}))
    seen = []
    for _ in range(150):
        bae.penalty(None)
        seen.append(bae.coefficient())
    assert seen[0] == pytest.approx(1e-4) and seen[99] == pytest.approx(0.01)
    assert max(seen) == 0.01


def test_no_penalty_and_the_rounds_lr_outside_adjustment_rounds():
    bae = BaE(lam=1.0)
    bae.begin(toy_context({}))
    assert bae.marked() == {} and bae.penalty(None) is None
    assert bae.learning_rate(0, 10, 0.05, 1.0) == 0.05
    assert bae.end(None) == {}


def test_learning_rate_follows_the_rex_budget_and_boosts_a_decayed_rate():
    ctx = toy_context({"0.weight": 6})
    bae = BaE()
    bae.begin(ctx)
    s = 2 / (1 + math.exp(-bae.norm())) - 1  # 2 * sigmoid(||theta_low||) - 1
    budget, lr0 = 10, 1.0
    decayed = 0.01  # eta_t late in a decaying schedule: below beta_t, so the boost fires
    assert math.isclose(bae.learning_rate(0, budget, decayed, lr0), s)  # p(0) = 1
    assert bae.learning_rate(budget, budget, decayed, lr0) == decayed  # p(T) = 0
    for t in range(budget):
        p = (2 * budget - 2 * t) / (2 * budget - t)
        assert math.isclose(bae.learning_rate(t, budget, decayed, lr0), max(decayed, p * s))
    rates = [bae.learning_rate(t, budget, decayed, lr0) for t in range(budget + 1)]
    assert rates == sorted(rates, reverse=True) and rates[0] > decayed
    # At the initial rate the boost never fires: beta_t < eta_0 always.
    assert all(bae.learning_rate(t, budget, lr0, lr0) == lr0 for t in range(budget))


def test_the_boost_fires_in_a_run_with_a_decaying_schedule(pm, digits):
    """Late adjustment rounds of an exponentially decayed run train above the round's rate."""
    config, parts, model, masks, run = fedmef_setup(
        pm, digits, rounds=30, local_steps=4, batch_size=16, lr=0.5, lr_schedule="exp",
        lr_min=0.001, options={"cosine.interval": 1, "cosine.stop": 1.0})
    bae = parts.one(Regularizer)
    counts = M.adjustment_counts(masks, 0.3)
    round_ = 28
    lr = config.learning_rate(round_)
    assert lr < 0.01  # decayed
    seen = []
    real = bae.learning_rate

    def spy(step, total, lr_t, lr0):
        seen.append((real(step, total, lr_t, lr0), lr_t))
        return seen[-1][0]

    bae.learning_rate = spy
    run.trainer.train(0, run.state, masks, RoundPlan(round_, counts), lr)
    assert seen and seen[0][0] > seen[0][1]  # the first step is boosted above eta_t


def local_round(pm, digits, options, steps=10):
    config, parts, model, masks, run = fedmef_setup(
        pm, digits, local_steps=steps, lr=0.05, options=options
    )
    counts = M.adjustment_counts(masks, 0.3)
    state = {k: v.detach().clone() for k, v in run.state.items()}
    update = run.trainer.train(0, state, masks, RoundPlan(1, counts), 0.05)
    marked = parts.one(Regularizer).marked()
    norm = math.sqrt(sum(float(update.state[n][m].square().sum()) for n, m in marked.items()))
    start = math.sqrt(sum(float(state[n][m].square().sum()) for n, m in marked.items()))
    return norm, start, update, counts, masks


def test_bae_extrudes_the_marked_weights_within_the_budget(pm, digits):
    with_bae, start, update, counts, masks = local_round(pm, digits, {})
    plain, start_plain, *_ = local_round(pm, digits, {"bae.lam": 0.0, "bae.budget": False})
    assert start == start_plain  # same weights, same marked set, same batches
    assert with_bae <= 0.1 * start < plain  # at most 10% left; plain training keeps most
    assert update.metrics["bae_norm_ratio"] == pytest.approx(with_bae / start, rel=1e-5)
    # FedMef clients upload only the top-k_l gradients among inactive positions.
    for name, mask in masks.items():
        k = min(counts[name], int((~mask).sum()))
        values = update.payload.get(f"{name}/values")
        score = fedprune.comm.decode_sparse(name, update.payload, update.state[name])
        assert values is None or values.numel() == k
        assert int(score.count_nonzero()) <= k and not score[mask].any()


# ------------------------------------------------------------------------------------ growth


def test_growth_gradient_through_nsconv_is_not_degenerate(pm, digits):
    _, parts, model, masks, _ = fedmef_setup(pm, digits, density=0.3)
    prunable = M.prunable_parameters(model)
    x, y = digits.train.batch(np.arange(32))
    grads = growth_gradients(model, prunable, x, y)
    F.cross_entropy(model(x), y).backward()  # the raw-parameter gradient, for contrast
    checked = 0
    for name, module in prunable.items():
        if not isinstance(module, nn.Conv2d):
            continue
        mask, raw = masks[name], module.weight.grad
        for channel in range(mask.shape[0]):
            pruned = ~mask[channel]
            effective = grads[name][channel][pruned]
            if int(pruned.sum()) < 3 or not effective.any():  # dense, or a dead ReLU channel
                continue
            assert effective.unique().numel() > 1
            # Through the standardisation every pruned position of the channel gets one value.
            same = raw[channel][pruned]
            assert torch.allclose(same, same[0].expand_as(same), rtol=1e-4, atol=1e-7)
            checked += 1
    assert checked >= 10


# ------------------------------------------------------------------------------- adjustments


def test_density_after_every_adjustment_equals_the_target(pm, digits):
    config, parts, model, masks, run = fedmef_setup(
        pm, digits, rounds=4, local_steps=2, batch_size=16, options={"cosine.interval": 1},
    )
    targets = {n: int(m.sum()) for n, m in masks.items()}
    sim = Simulation(run)
    changed = 0
    for round_ in range(1, config.rounds + 1):
        before = {n: m.clone() for n, m in sim.prepared.masks.items()}
        fraction = parts.one(Schedule).fraction(round_, config.rounds)
        counts = M.adjustment_counts(before, fraction)
        sim.step(round_, [0, 1])
        assert {n: int(m.sum()) for n, m in sim.prepared.masks.items()} == targets
        assert M.density(sim.prepared.masks) == M.density(masks)
        for name, mask in sim.prepared.masks.items():
            assert not sim.prepared.state[name][~mask].any()  # pruned weights are exactly 0
            moved = int((mask & ~before[name]).sum())
            assert moved == min(counts.get(name, 0), int((~before[name]).sum()))
            changed += moved
    assert changed > 0


def test_fedmef_bench_end_to_end(tmp_path):
    from fedprune.cli import main

    out = tmp_path / "out"
    args = [
        "bench", "--methods", "fedmef", "--no-tracking", "--rounds", "2", "--clients", "4",
        "--clients-per-round", "2", "--local-steps", "2", "-o", "cnn.width=4",
        "-o", "cosine.interval=1", "--output", str(out), "--threads", "1",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (record,) = json.loads((out / "results.json").read_text())
    assert record["status"] == "ok", record.get("error")
    assert record["components"]["regularizer"] == "bae"
    assert record["components"]["activation_compressors"] == ["sap"]
    assert 0 < record["density"] <= 0.2 + 1e-9
