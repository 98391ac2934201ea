"""NSConv: the standardisation, its recomputed backward, the growth capture and the transform."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedprune.errors import FedpruneError
from fedprune.memory import SavedTensorMeter
from fedprune.ops.conv import ConvSpec, conv2d_function, standardize, standardize_backward
from fedprune.testing import check_component
from fedprune_plugins import nsconv
from fedprune_plugins.components.nsconv import NSConv, NSConv2d


def _block() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, bias=True),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def _ns(conv: nn.Conv2d, **kw) -> NSConv2d:
    return NSConv2d.convert(copy.deepcopy(conv), **kw)


def test_registered_as_model_transform():
    (component,) = nsconv.fedprune_model_transforms()
    assert component.name == "nsconv"
    assert component.options() == {"stats": "all", "recompute": True, "scale_activations": "auto"}


@pytest.mark.parametrize("options", [{}, {"stats": "active"}, {"recompute": False}])
def test_meets_the_model_transform_contract(fedprune_pm, options):
    check_component(fedprune_pm, "nsconv", options)


def test_transform_keeps_parameters_names_and_rng():
    model = _block()
    before = dict(model.named_parameters())
    rng = torch.get_rng_state()
    NSConv().apply(model)
    assert torch.equal(rng, torch.get_rng_state())  # initial masks drawn later are unaffected
    after = dict(model.named_parameters())
    for name in ("0.weight", "3.weight", "3.bias", "8.weight", "8.bias"):
        assert after[name] is before[name]
    assert set(after) == {"0.weight", "0.gain", "3.weight", "3.bias", "3.gain", "8.weight",
                          "8.bias"}
    assert isinstance(model[0], NSConv2d) and isinstance(model[3], NSConv2d)
    assert isinstance(model[1], nn.Identity) and isinstance(model[4], nn.Identity)
    assert model[3].gain.shape == (8, 1, 1, 1)
    assert torch.equal(model[3].gain, torch.ones(8, 1, 1, 1))
    assert model[0].weight_mask is None and model[0].capture_effective_weight is False
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert model[0].gain.grad is not None


def test_options_are_validated_and_parsed():
    with pytest.raises(FedpruneError, match="stats"):
        NSConv(stats="median")
    assert NSConv(recompute="false").recompute is False
    with pytest.raises(FedpruneError):
        NSConv(recompute="maybe")


def test_standardised_weight_is_zero_mean_unit_norm_per_channel():
    torch.manual_seed(1)
    w = torch.randn(6, 4, 3, 3) * 3 + 1
    what = standardize(w, torch.ones(6, 1, 1, 1))
    assert torch.allclose(what.mean((1, 2, 3)), torch.zeros(6), atol=1e-6)
    assert torch.allclose(what.square().sum((1, 2, 3)), torch.ones(6), atol=1e-5)


def test_output_is_zero_for_a_constant_input():
    torch.manual_seed(2)
    conv = NSConv2d.convert(nn.Conv2d(4, 5, 3, padding=0, bias=False))
    x = torch.full((2, 4, 7, 7), 2.5)
    for recompute in (True, False):
        conv.recompute = recompute
        out = conv(x.clone().requires_grad_())
        assert out.abs().max() < 1e-5


@pytest.mark.parametrize("stats", ["all", "active"])
def test_closed_form_backward_matches_autograd(stats):
    torch.manual_seed(3)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(5, 1, 1, 1, dtype=torch.float64) + 0.5).requires_grad_()
    mask = torch.rand(5, 3, 3, 3) < 0.4
    mask[0] = False  # an empty channel
    grad = torch.randn(5, 3, 3, 3, dtype=torch.float64) * mask
    ref = torch.autograd.grad((standardize(w, g, mask, stats) * grad).sum(), (w, g))
    ours = standardize_backward(grad, w.detach(), g.detach(), mask, stats)
    for a, b in zip(ours, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("stats", ["all", "active"])
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_recomputed_conv(stats, masked):
    torch.manual_seed(4)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(4, 1, 1, 1, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(4, 2, 3, 3) < 0.5) if masked else None
    spec = ConvSpec((2, 1), (1, 0), (1, 2), 2, stats)
    assert torch.autograd.gradcheck(
        lambda x, w, g, b: conv2d_function(x, w, b, spec, g, mask), (x, w, g, b), fast_mode=True
    )


@settings(max_examples=25, deadline=None)
@given(
    stats=st.sampled_from(["all", "active"]),
    density=st.sampled_from([None, 0.05, 0.1, 0.5]),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    groups=st.sampled_from([1, 2]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_recompute_matches_textbook(stats, density, stride, padding, groups, bias, seed):
    # float64: a channel with one or two active weights has a zero weight gradient that float32
    # rounds to noise amplified by the scale s, differently in the two forms.
    torch.manual_seed(seed)
    base = nn.Conv2d(4, 6, 3, stride=stride, padding=padding, groups=groups, bias=bias).double()
    with torch.no_grad():
        base.weight.mul_(torch.rand(6, 1, 1, 1, dtype=torch.float64) * 4)
    fast, slow = _ns(base, stats=stats, recompute=True), _ns(base, stats=stats, recompute=False)
    if density is not None:
        mask = torch.rand(base.weight.shape) < density
        with torch.no_grad():
            fast.weight.mul_(mask)
            slow.weight.mul_(mask)
        fast.weight_mask = slow.weight_mask = mask
    x = torch.randn(3, 4, 7, 7, dtype=torch.float64)
    outs, grads = [], []
    for conv in (fast, slow):
        xi = x.clone().requires_grad_()
        out = conv(xi)
        weights = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)
        (out * weights).sum().backward()
        outs.append(out)
        grads.append([xi.grad] + [p.grad for p in conv.parameters()])
    assert torch.allclose(outs[0], outs[1], rtol=1e-10, atol=1e-10)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-8)


def test_recompute_matches_textbook_in_float32():
    torch.manual_seed(8)
    base = nn.Conv2d(16, 32, 3, padding=1)
    fast, slow = _ns(base, recompute=True), _ns(base, recompute=False)
    mask = torch.rand(base.weight.shape) < 0.3
    with torch.no_grad():
        fast.weight.mul_(mask)
        slow.weight.mul_(mask)
    fast.weight_mask = slow.weight_mask = mask
    x = torch.randn(4, 16, 8, 8)
    grads = []
    for conv in (fast, slow):
        conv(x).square().sum().backward()
        grads.append([p.grad for p in conv.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_recompute_saves_nothing_weight_sized():
    torch.manual_seed(5)
    conv = NSConv2d.convert(nn.Conv2d(16, 32, 3, padding=1))
    conv.weight_mask = torch.rand(conv.weight.shape) < 0.3
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    with SavedTensorMeter(exclude=conv) as meter:
        conv(x)
    stats = 4 * 32 * 4  # per-channel mean, scale, flag and count: tiny
    assert meter.bytes == x.nbytes + conv.weight_mask.nbytes + stats  # and the engine's mask
    conv.recompute = False
    with SavedTensorMeter(exclude=conv) as meter:
        conv(x)
    assert meter.bytes >= x.nbytes + 2 * conv.weight.nbytes


@pytest.mark.parametrize("recompute", [True, False])
def test_growth_capture_gives_effective_weight_gradient(recompute):
    torch.manual_seed(6)
    conv = NSConv2d.convert(nn.Conv2d(3, 4, 3, padding=1), stats="all", recompute=recompute)
    mask = torch.rand(conv.weight.shape) < 0.3
    with torch.no_grad():
        conv.weight.mul_(mask)
    conv.weight_mask = mask
    x = torch.randn(2, 3, 6, 6)
    conv.capture_effective_weight = True
    conv(x).square().sum().backward()
    got = conv.effective_weight.grad
    # Reference: the gradient w.r.t. the (masked) standardised weight the conv uses.
    what = (standardize(conv.weight, conv.gain, mask) * mask).detach().requires_grad_()
    F.conv2d(x, what, conv.bias, padding=1).square().sum().backward()
    assert torch.allclose(got, what.grad, atol=1e-5)
    pruned = got[~mask]
    assert pruned.abs().min() > 0 and pruned.unique().numel() > 4  # informative, not degenerate
    conv.capture_effective_weight = False
    conv(x)
    assert conv.effective_weight is None


def test_eval_without_grad_matches_training_forward():
    torch.manual_seed(7)
    conv = NSConv2d.convert(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))
    conv.weight_mask = torch.rand(conv.weight.shape) < 0.5
    x = torch.randn(2, 3, 5, 5)
    train = conv(x)
    with torch.no_grad():
        assert torch.allclose(conv(x), train, atol=1e-6)


# ---------------------------------------------------------------- variance-preserving activations


def test_variance_gains_are_the_authors_constant_and_exact_elsewhere():
    from fedprune_plugins.components.nsconv import VPRELU, variance_gain

    assert variance_gain(nn.ReLU()) == VPRELU == 1.7139588594436646
    relu6 = variance_gain(nn.ReLU6())
    assert relu6 == pytest.approx(math.sqrt(2 / (1 - 1 / math.pi)), abs=1e-6)  # never reaches 6
    x = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))
    for act in (nn.ReLU6(), nn.Hardtanh(), nn.SiLU()):
        assert float((variance_gain(act) * act(x)).std()) == pytest.approx(1.0, abs=3e-3)


def test_auto_scales_every_activation_but_plain_relu():
    from fedprune_plugins.components.nsconv import Scaled

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU6())
    NSConv().apply(model)
    assert type(model[1]) is nn.ReLU and isinstance(model[3], Scaled)
    everything = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    NSConv(scale_activations="all").apply(everything)
    assert isinstance(everything[1], Scaled)
    with pytest.raises(FedpruneError, match="scale_activations"):
        NSConv(scale_activations="some")


def test_every_builtin_model_keeps_its_signal_under_nsconv():
    """benchmarks/init_signal.py: NSConv twins keep a tenth of BatchNorm logits RMS or more."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "init_signal.py"
    spec = importlib.util.spec_from_file_location("signal_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for seed in (0, 1):
        for row in module.measure(list(module.MODELS), seed):
            assert row["nsconv_rms"] >= 0.1 * row["bn_rms"], row
            assert row["nsconv_rms"] <= 10 * row["bn_rms"], row  # and it does not explode


@pytest.mark.parametrize("density", [1.0, 0.3, 0.05])
def test_every_stats_mode_preserves_the_signal_of_a_sparse_layer(density):
    # The scale is rsqrt(var * n) with n the count the statistics are taken over: a unit-variance
    # input gives a unit-RMS output per channel (gain 1), whatever the density.
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 256, 1, 1, generator=gen)
    mask = torch.rand(weight.shape, generator=gen) < density
    mask[:, 0] = True
    x = torch.randn(4096, 256, generator=gen)
    for stats in ("all", "active"):
        w = standardize(weight * mask, torch.ones(64, 1, 1, 1), mask, stats) * mask
        rms = (x @ w.view(64, -1).T).pow(2).mean().sqrt()
        assert 0.8 <= float(rms) <= 1.2, (stats, float(rms))
