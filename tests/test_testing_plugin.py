"""fedprune.testing: every registered part passes its contract, the checks catch broken parts,
and an author's test file runs with the plugin (through pytester)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import fedprune
from fedprune import hookimpl
from fedprune.errors import FedpruneError
from fedprune.registry import Component
from fedprune.testing import (
    CHECKS,
    check_activation_compressor,
    check_component,
    check_growth_criterion,
    check_mask_policy,
    check_method,
    check_model,
    check_model_transform,
    check_partitioner,
    check_pruning_criterion,
    check_regularizer,
    check_schedule,
    host_plugin_manager,
    register_plugin,
    tiny_config,
)

pytest_plugins = ["pytester", "fedprune.testing"]

#: Whatever fedprune itself registers when the tests are collected.
HOST = host_plugin_manager()
COMPONENTS = [(kind, name) for kind in CHECKS for name in HOST.registry.names(kind)]
METHODS = HOST.registry.names("method")


# ------------------------------------------------------------- every registered part passes


@pytest.mark.parametrize(("kind", "name"), COMPONENTS, ids=[f"{k}-{n}" for k, n in COMPONENTS])
def test_registered_component_passes_its_contract(kind, name):
    CHECKS[kind](HOST.registry.get(name, kind))


@pytest.mark.parametrize("spec", METHODS)
def test_registered_method_runs_reproducibly_on_the_tiny_federation(spec, tiny_federation):
    result = check_method(spec, tiny_federation)
    assert result["method"] == spec


def test_every_contract_kind_is_exercised_by_a_registered_component():
    assert {kind for kind, _ in COMPONENTS} == set(CHECKS)


def test_check_component_dispatches_on_the_kind():
    check_component(HOST, "cosine")
    with pytest.raises(FedpruneError, match="a method: use check_method"):
        check_component(HOST, "feddst")


# ------------------------------------------------------------------------------------ fixtures


def test_fedprune_pm_holds_only_fedprune_and_the_plugins_under_test(fedprune_pm):
    infos = fedprune_pm.plugin_infos()
    assert {i.distribution for i in infos} == {"fedprune"}
    assert {"builtins", "feddst", "sparse"} <= {i.name for i in infos}


class HalfOnce:
    def fraction(self, round, total_rounds):
        return 0.5 if round == 1 else 0.0


class SchedulePlugin:
    @hookimpl
    def fedprune_schedules(self):
        return [Component("half_once", HalfOnce, "half of the active weights in round 1")]


def test_registered_plugins_are_visible_to_the_tiny_federation(fedprune_pm, tiny_federation):
    register_plugin(fedprune_pm, SchedulePlugin(), name="extra")
    assert fedprune_pm.registry.get("half_once", "schedule").plugin == "extra"
    result = check_method("feddst+half_once", tiny_federation)
    assert result["components"]["schedule"] == "half_once"


def test_tiny_federation_records_every_lifecycle_hook(tiny_federation):
    [result] = tiny_federation.run("feddst")
    assert result["status"] == "ok"
    names = tiny_federation.event_names()
    config = tiny_federation.config
    assert names[:2] == ["fedprune_bench_start", "fedprune_run_start"]
    assert names[-2:] == ["fedprune_run_end", "fedprune_bench_end"]
    clients = names.count("fedprune_client_trained")
    assert clients == config.rounds * config.clients_per_round
    assert names.count("fedprune_round_end") == config.rounds
    assert names.count("fedprune_masks_updated") >= 1  # the tiny schedule adjusts in round 1
    rounds = [e["round"] for n, e in tiny_federation.events if n == "fedprune_round_end"]
    assert rounds == list(range(1, config.rounds + 1))


def test_tiny_federation_overrides_settings_and_options(tiny_federation):
    results = tiny_federation.run(["fedavg"], seeds=[0, 1], rounds=1, options={"cnn.width": 2})
    assert [(r["seed"], r["rounds"]) for r in results] == [(0, 1), (1, 1)]
    assert results[0]["config"]["options"]["cnn.width"] == 2
    assert tiny_federation.config.rounds == tiny_config().rounds


# ------------------------------------------------------------- the checks catch broken parts


class WrongShape:
    def scores(self, weight, grad):
        return weight.abs().flatten()


class InPlace:
    def scores(self, weight, grad):
        return weight.abs_()


class NoServerPath:
    """The bare ``|w * g|`` fails where the server re-prunes without a gradient."""

    def scores(self, weight, grad):
        return (weight * grad).abs()


class NotFinite:
    def scores(self, weight, grad):
        return weight.abs() / 0.0


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (WrongShape, AssertionError, "has shape"),
        (InPlace, AssertionError, "modified the weight in place"),
        (NoServerPath, TypeError, "NoneType"),
        (NotFinite, AssertionError, "not finite"),
    ],
)
def test_check_pruning_criterion_catches(factory, error, match):
    with pytest.raises(error, match=match):
        check_pruning_criterion(factory, max_examples=10)


class ForgetsALayer:
    def scores(self, weights, grads):
        return {n: g for i, (n, g) in enumerate(grads.items()) if i}


def test_check_growth_criterion_catches_a_missing_layer():
    with pytest.raises(AssertionError, match="no entry for"):
        check_growth_criterion(ForgetsALayer, max_examples=2)


class ReadsGradientsItSaysItDoesNotUse:
    uses_gradient = False

    def scores(self, weights, grads):
        return {n: grads[n] for n in weights}


def test_check_growth_criterion_calls_without_gradients_where_uses_gradient_is_false():
    with pytest.raises(KeyError):
        check_growth_criterion(ReadsGradientsItSaysItDoesNotUse, max_examples=2)


class Doubling:
    """Changes the forward pass: ReLU becomes 2 * ReLU."""

    def apply(self, model):
        for name, module in model.named_children():
            if isinstance(module, nn.ReLU):
                model._modules[name] = nn.Sequential(nn.ReLU(), _Scale(2.0))


class _Scale(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return x * self.k


class _CoarseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x > 0)
        return x.relu()

    @staticmethod
    def backward(ctx, grad):
        (positive,) = ctx.saved_tensors
        return (grad * positive).to(torch.bfloat16).to(grad.dtype) + 1e-2 * positive


class Lossy:
    """Same forward, but an approximate gradient through every ReLU."""

    def apply(self, model):
        for name, module in model.named_children():
            if isinstance(module, nn.ReLU):
                model._modules[name] = _Approx()


class _Approx(nn.Module):
    def forward(self, x):
        return _CoarseGrad.apply(x)


class NewWeights:
    """Rebuilds convolutions: the parameters are new objects."""

    def apply(self, model):
        for name, module in model.named_children():
            if isinstance(module, nn.Conv2d):
                fresh = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                                  padding=module.padding, bias=module.bias is not None)
                fresh.load_state_dict(module.state_dict())
                model._modules[name] = fresh


@pytest.mark.parametrize(
    ("factory", "match"),
    [(Doubling, "forward output changed"), (Lossy, "input gradient changed"),
     (NewWeights, "replaced or renamed parameters")],
)
def test_check_activation_compressor_catches(factory, match):
    with pytest.raises(AssertionError, match=match):
        check_activation_compressor(factory, max_examples=2)


class _GradientFunction(torch.autograd.Function):
    """A conv whose weight gradient is replaced (zeroed or scrambled); input gradient exact."""

    @staticmethod
    def forward(ctx, x, weight, bias, mode):
        ctx.save_for_backward(x, weight)
        ctx.mode, ctx.has_bias = mode, bias is not None
        return nn.functional.conv2d(x, weight, bias, padding=1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [1, 1],
            [1, 1], False, [0, 0], 1, [True, True, ctx.has_bias])
        if ctx.mode == "zero":
            grad_w = torch.zeros_like(grad_w)
        else:
            flat = grad_w.flatten()
            grad_w = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(
                0))].view_as(grad_w)
        return grad_x, grad_w, grad_b, None


class _BadGradientConv(nn.Conv2d):
    mode = "zero"

    def forward(self, x):
        return _GradientFunction.apply(x, self.weight, self.bias, self.mode)


class ZeroGradient:
    """Keeps forward and the input gradient, zeroes the weight gradient."""

    def apply(self, model):
        for module in model.modules():
            if type(module) is nn.Conv2d:
                module.__class__ = _BadGradientConv


class ScrambledGradient(ZeroGradient):
    """Keeps forward and the input gradient, permutes the weight gradient."""

    def apply(self, model):
        super().apply(model)
        for module in model.modules():
            if isinstance(module, _BadGradientConv):
                module.mode = "scramble"


@pytest.mark.parametrize("factory", [ZeroGradient, ScrambledGradient])
def test_check_activation_compressor_catches_a_wrong_weight_gradient(factory):
    with pytest.raises(AssertionError, match="cosine similarity"):
        check_activation_compressor(factory, max_examples=3)


class CostsMemory(fedprune.ActivationCompressor):
    """Keeps a second copy of every conv input: forward and gradients exact, memory worse."""

    def apply(self, model):
        for module in model.modules():
            if type(module) is nn.Conv2d:
                module.register_forward_pre_hook(lambda m, args: (args[0] * 1.0,))


def test_check_activation_compressor_catches_a_compressor_that_costs_memory():
    with pytest.raises(AssertionError, match="costs memory|no layer saves fewer"):
        check_activation_compressor(CostsMemory, max_examples=2)


def test_check_model_transform_catches_new_parameters():
    with pytest.raises(AssertionError, match="new Parameter"):
        check_model_transform(NewWeights, max_examples=2)


class Constant:
    def penalty(self, model):
        return torch.tensor(1.0)


class PerLayer:
    def penalty(self, model):
        return torch.stack([p.pow(2).sum() for p in model.parameters()])


@pytest.mark.parametrize(("factory", "match"),
                         [(Constant, "does not depend"), (PerLayer, "scalar tensor")])
def test_check_regularizer_catches(factory, match):
    with pytest.raises(AssertionError, match=match):
        check_regularizer(factory, max_examples=2)


class TooMuch:
    def fraction(self, round, total_rounds):
        return 1.5 if round == total_rounds else 0.0


def test_check_schedule_catches_a_fraction_above_one():
    with pytest.raises(AssertionError, match=r"outside \[0, 1\]"):
        check_schedule(TooMuch)


class FloatMasks:
    def update(self, masks, weights, scores, counts, round, total_rounds):
        return {n: m.float() for n, m in masks.items()}


def test_check_mask_policy_catches_float_masks():
    with pytest.raises(AssertionError, match="not a bool tensor"):
        check_mask_policy(FloatMasks, max_examples=1)


def unseeded_model(num_classes, input_shape):
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes))
    with torch.no_grad():
        model[1].weight.add_(torch.from_numpy(np.random.default_rng().normal(size=(1,))).float())
    return model


def test_check_model_catches_weights_that_ignore_the_seed():
    with pytest.raises(AssertionError, match="differs between two builds"):
        check_model(unseeded_model, max_examples=1)


class DropsOne:
    def split(self, labels, num_clients, generator):
        return np.array_split(np.arange(1, len(labels)), num_clients)


def test_check_partitioner_catches_a_lost_sample():
    with pytest.raises(AssertionError, match="exactly one client"):
        check_partitioner(DropsOne, max_examples=2)


class GlobalRandomGrowth:
    """Draws from a generator seeded by the clock: two runs of one seed differ. (torch's global
    stream would be reproducible: the engine seeds it around each client's work.)"""

    def scores(self, weights, grads):
        generator = torch.Generator()
        generator.seed()
        return {n: torch.rand(w.shape, generator=generator) for n, w in weights.items()}


class FailingCriterion:
    def scores(self, weight, grad):
        raise RuntimeError("criterion exploded")


class TroublePlugin:
    @hookimpl
    def fedprune_growth_criteria(self):
        return [Component("global_random", GlobalRandomGrowth)]

    @hookimpl
    def fedprune_pruning_criteria(self):
        return [Component("exploding", FailingCriterion)]


@pytest.mark.parametrize(
    ("spec", "match"),
    [("feddst+global_random", "not reproducible"), ("feddst+exploding", "criterion exploded")],
)
def test_check_method_catches(spec, match, fedprune_pm, tiny_federation):
    fedprune_pm.register(TroublePlugin(), name="trouble")
    with pytest.raises(AssertionError, match=match):
        check_method(spec, tiny_federation)


# ------------------------------------------------------------- an author's suite, via pytester

AUTHOR_PLUGIN = """
    import fedprune


    class AbsGrad:
        def scores(self, weight, grad):
            return weight.abs() if grad is None else grad.abs()


    class Spiky:
        def fraction(self, round, total_rounds):
            return 2.0 if round == 1 else 0.0


    @fedprune.hookimpl
    def fedprune_pruning_criteria():
        return [fedprune.Component("absgrad", AbsGrad, "prune where |dL/dw| is smallest")]


    @fedprune.hookimpl
    def fedprune_schedules():
        return [fedprune.Component("spiky", Spiky, "a broken schedule")]


    @fedprune.hookimpl
    def fedprune_methods():
        return [fedprune.Method("feddst_absgrad", adjust="client", pruning_criterion="absgrad",
                                growth_criterion="gradient", schedule="cosine")]
"""

AUTHOR_CONFTEST = """
    import pytest

    pytest_plugins = ["fedprune.testing"]


    @pytest.fixture
    def fedprune_plugins():
        import author_plugin

        return [author_plugin]
"""

AUTHOR_TESTS = """
    from fedprune.testing import check_component, check_method


    def test_criterion_contract(fedprune_pm):
        check_component(fedprune_pm, "absgrad")


    def test_method_runs(tiny_federation):
        assert check_method("feddst_absgrad", tiny_federation)["status"] == "ok"


    def test_schedule_contract(fedprune_pm):
        check_component(fedprune_pm, "spiky")
"""


def test_an_author_suite_runs_with_fedprune_testing(pytester):
    pytester.makepyfile(author_plugin=textwrap.dedent(AUTHOR_PLUGIN))
    pytester.makeconftest(textwrap.dedent(AUTHOR_CONFTEST))
    pytester.makepyfile(test_author=textwrap.dedent(AUTHOR_TESTS))
    pytester.syspathinsert()
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*schedule 'spiky' (plugin *author_plugin*)*outside [[]0, 1[]]*"])


def test_fedprune_testing_is_opt_in(pytester):
    pytester.makepyfile(test_plain="def test_needs_it(fedprune_pm):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'fedprune_pm' not found*"])
