"""SAP: exact input gradients, weight gradients from the pruned input, compact storage."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from fedprune.errors import FedpruneError
from fedprune.memory import SavedTensorMeter
from fedprune.ops.layers import CodecConv2d, CodecLinear
from fedprune.testing import check_component, check_method
from fedprune_plugins import sap as sap_module
from fedprune_plugins.components.bitact import BitAct
from fedprune_plugins.components.nsconv import NSConv, NSConv2d, Scaled
from fedprune_plugins.components.sap import SAP


def _sap_conv(conv: nn.Conv2d, **options) -> CodecConv2d:
    conv = copy.deepcopy(conv)
    SAP(**options).apply(conv)
    return conv


def _run(module: nn.Module, x: torch.Tensor, weights: torch.Tensor | None = None):
    """Forward and backward of a fixed non-trivial loss; (output, input grad, param grads)."""
    x = x.detach().clone().requires_grad_()
    out = module(x)
    if weights is None:
        weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * weights).sum().backward()
    return out, x.grad, {n: p.grad for n, p in module.named_parameters()}


def test_registered_as_activation_compressor():
    (component,) = sap_module.fedprune_activation_compressors()
    assert component.name == "sap"
    assert component.options() == {
        "gamma": 0.5, "threshold": "estimate", "values": "float32", "storage": "mask",
        "linear": False, "sample": 32768,
    }


@pytest.mark.parametrize("options", [
    {"gamma": 0.7},
    {"gamma": 0.9, "threshold": "exact", "values": "bfloat16", "linear": True},
])
def test_meets_the_activation_compressor_contract(fedprune_pm, options):
    check_component(fedprune_pm, "sap", options)


def test_all_three_components_in_a_federated_run(tiny_federation):
    # client-side adjustment: the growth pass goes through capture_effective_weight
    result = check_method("feddst+nsconv+sap+bitact", tiny_federation)
    assert result["status"] == "ok"


@pytest.mark.parametrize(
    "options", [{"gamma": 1.0}, {"gamma": -0.1}, {"threshold": "topk"}, {"values": "int8"},
                {"sample": 0}, {"linear": "perhaps"}],
)
def test_bad_options_are_refused(options):
    with pytest.raises(FedpruneError):
        SAP(**options)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    depthwise = draw(st.booleans())
    cin = groups * (1 if depthwise else draw(st.integers(1, 3)))
    cout = groups * draw(st.integers(1, 3))
    k = draw(st.integers(1, 3))
    stride, padding, dilation = draw(st.integers(1, 2)), draw(st.integers(0, 2)), draw(
        st.integers(1, 2))
    h, w = draw(st.integers(3, 9)), draw(st.integers(3, 9))
    assume(min(h, w) + 2 * padding - dilation * (k - 1) - 1 >= 0)
    return dict(
        conv=dict(in_channels=cin, out_channels=cout, kernel_size=k, stride=stride,
                  padding=padding, dilation=dilation, groups=groups,
                  bias=draw(st.booleans())),
        shape=(draw(st.integers(1, 3)), cin, h, w),
        gamma=draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9])),
        values=draw(st.sampled_from(["float32", "bfloat16"])),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=60, deadline=None)
@given(case=conv_cases())
def test_gradients_and_saved_bytes(case):
    torch.manual_seed(case["seed"])
    base = nn.Conv2d(**case["conv"])
    conv = _sap_conv(base, gamma=case["gamma"], threshold="exact", values=case["values"])
    x = torch.randn(case["shape"])
    ref_out, ref_gx, _ = _run(base, x)

    x = x.requires_grad_()
    with SavedTensorMeter(exclude=conv) as meter:
        out = conv(x)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * weights).sum().backward()
    assert torch.equal(out, ref_out)
    assert torch.equal(x.grad, ref_gx)  # exact: the input gradient needs only the weight

    # The weight gradient is the one of the explicitly pruned input (the cache returns the
    # encoding this forward used, as x is the same live tensor).
    codec = conv.input_codec
    pruned = codec.decode(codec.encode(x), x.shape, x.dtype)
    kept = pruned != 0
    n = x.numel()
    assert torch.equal(pruned[kept], x.detach()[kept].to(torch.bfloat16).float()
                       if case["values"] == "bfloat16" else x.detach()[kept])
    assert int(kept.sum()) <= n - int(case["gamma"] * n)
    dropped = x.detach()[~kept].abs()
    if dropped.numel() and kept.any():
        assert dropped.max() <= x.detach()[kept].abs().min()
    check = copy.deepcopy(base)
    _, _, ref_grads = _run(check, pruned, weights)
    for name, grad in conv.named_parameters():
        assert torch.allclose(grad.grad, ref_grads[name], rtol=1e-5, atol=1e-6), name

    value_bytes = 2 if case["values"] == "bfloat16" else 4
    assert meter.bytes <= (1 - case["gamma"]) * n * value_bytes + math.ceil(n / 8) + 4


def test_estimated_threshold_within_bound_on_large_input():
    torch.manual_seed(0)
    conv = _sap_conv(nn.Conv2d(8, 8, 3, padding=1, bias=False), gamma=0.7, sample=4096)
    x = torch.randn(8, 8, 32, 32, requires_grad=True)
    with SavedTensorMeter(exclude=conv) as meter:
        conv(x).sum().backward()
    n = x.numel()
    assert meter.bytes <= (0.3 + 0.01) * n * 4 + math.ceil(n / 8)


def _relu_maps(batch=64, channels=16, width=32, seed=0):
    """Realistic conv inputs: ReLU outputs of a random conv of smooth random images."""
    g = torch.Generator().manual_seed(seed)
    images = F.avg_pool2d(torch.randn(batch, 3, width + 2, width + 2, generator=g), 3, 1)
    weight = torch.randn(channels, 3, 3, 3, generator=g) * torch.rand(channels, 1, 1, 1,
                                                                      generator=g)
    return F.conv2d(images, weight, padding=1).relu()


def _kept_fraction(codec: SAP, x: torch.Tensor) -> float:
    values, _ = codec.encode(x).tensors
    return values.numel() / x.numel()


@pytest.mark.parametrize("gamma", [0.6, 0.7, 0.8, 0.9])
def test_estimated_threshold_keeps_target_fraction_on_relu_maps(gamma):
    x = _relu_maps()
    codec = SAP(gamma=gamma)
    assert x.numel() >= 4 * codec.sample  # the estimate really samples
    target = 1 - gamma
    torch.manual_seed(int(100 * gamma))
    draws = [_kept_fraction(codec, x.clone()) for _ in range(5)]
    assert all(abs(kept - target) <= 0.01 for kept in draws), draws  # within 1 point each
    mean = sum(draws) / len(draws)
    if gamma <= 0.7:  # the mean within 1% of the target itself (at gamma 0.9: under 2 sigma)
        assert abs(mean - target) <= 0.01 * target, draws


def test_estimate_does_not_alias_with_columns():
    # Magnitude varies by column of 32-wide maps: a fixed stride of 64 would see one column.
    x = torch.rand(64, 16, 32, 32) * torch.arange(1, 33, dtype=torch.float32)
    codec = SAP(gamma=0.5)
    assert abs(_kept_fraction(codec, x) - 0.5) <= 0.005


@pytest.mark.parametrize("ratio", [1.5, 2.7, 40.0])
def test_estimate_covers_the_whole_tensor(ratio):
    # Magnitude grows along the tensor: a sample from one end would miss the target badly.
    sample = 4096
    x = torch.linspace(0, 1, int(ratio * sample))
    codec = SAP(gamma=0.7, sample=sample)
    assert abs(_kept_fraction(codec, x) - 0.3) <= 0.02


def test_exact_threshold_ties_never_exceed_the_target():
    x = _relu_maps(batch=4)  # about half exact zeros
    codec = SAP(gamma=0.3, threshold="exact")
    values, _ = codec.encode(x).tensors
    assert values.numel() == int((x != 0).sum())  # only zeros dropped: x~ equals x
    assert torch.equal(codec.decode(codec.encode(x), x.shape, x.dtype), x)


def test_shared_input_is_stored_once():
    torch.manual_seed(1)
    conv_a, conv_b = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 6, 1, stride=2)
    block = nn.ModuleDict({"a": conv_a, "b": conv_b})
    SAP(gamma=0.5).apply(block)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with SavedTensorMeter(exclude=block) as one:
        conv_a(x)
    with SavedTensorMeter(exclude=block) as both:
        ya, yb = conv_a(x), conv_b(x)
    assert both.bytes == one.bytes
    (ya.sum() + yb.sum()).backward()
    ref = x.detach().clone().requires_grad_()
    (F.conv2d(ref, conv_a.weight, conv_a.bias, padding=1).sum()
     + F.conv2d(ref, conv_b.weight, conv_b.bias, stride=2).sum()).backward()
    assert torch.allclose(x.grad, ref.grad)


@pytest.mark.parametrize("activation", [
    nn.ReLU(inplace=True), nn.ReLU6(inplace=True), nn.ReLU6(),
    Scaled(nn.ReLU6(inplace=True), 1.7128), Scaled(nn.ReLU(inplace=True), 1.7139),
], ids=["relu_", "relu6_", "relu6", "scaled-relu6_", "scaled-relu_"])
def test_an_input_the_activation_keeps_costs_nothing_and_prunes_the_same(activation):
    """The layer saves what the activation keeps anyway (its output, or the input it is an exact
    function of), rebuilds x from it in backward and prunes x exactly as a compressed save."""
    torch.manual_seed(2)
    pre, plain = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)
    conv = _sap_conv(plain, gamma=0.7, threshold="exact")
    x = torch.randn(2, 3, 8, 8)
    with SavedTensorMeter(exclude=pre) as alone:
        activation(pre(x))
    with SavedTensorMeter(exclude=nn.ModuleList([pre, conv])) as both:
        h = activation(pre(x))
        out = conv(h)
    assert both.bytes == alone.bytes > 0  # not one byte for the conv's input
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * weights).sum().backward()
    x_hat = h.detach()
    pruned = F.hardshrink(x_hat, float(x_hat.abs().flatten().kthvalue(int(0.7 * h.numel()))[0]))
    _, _, ref = _run(copy.deepcopy(plain), pruned, weights)
    for name, param in conv.named_parameters():
        assert torch.allclose(param.grad, ref[name], rtol=1e-5, atol=1e-6), name


def test_in_place_change_invalidates_the_cache():
    codec = SAP(gamma=0.5, threshold="exact")
    x = torch.randn(1000)
    first = codec.encode(x)
    assert codec.encode(x) is first
    x.mul_(-2)
    second = codec.encode(x)
    assert second is not first
    restored = codec.decode(second, x.shape, x.dtype)
    kept = restored != 0
    assert torch.equal(restored[kept], x[kept])  # the new values, not the old ones
    del x
    assert not codec._cache  # entries die with their tensor


@pytest.mark.parametrize("stats", ["all", "active"])
@pytest.mark.parametrize("values", ["float32", "bfloat16"])
def test_fused_with_nsconv_matches_unfused(stats, values):
    torch.manual_seed(2)
    base = nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2, bias=True)
    mask = torch.rand(base.weight.shape) < 0.4
    with torch.no_grad():
        base.weight.mul_(mask)
    layers = {}
    for recompute in (True, False):
        layer = NSConv2d.convert(copy.deepcopy(base), stats=stats, recompute=recompute)
        layer.weight_mask = mask
        SAP(gamma=0.6, threshold="exact", values=values).apply(layer)
        assert type(layer) is NSConv2d
        layers[recompute] = layer
    x = torch.randn(3, 6, 9, 9)
    fused, unfused = _run(layers[True], x), _run(layers[False], x)
    assert torch.allclose(fused[0], unfused[0], atol=1e-6)
    assert torch.allclose(fused[1], unfused[1], atol=1e-6)
    for name in fused[2]:
        assert torch.allclose(fused[2][name], unfused[2][name], rtol=1e-4, atol=1e-6), name

    # and both equal the plain NSConv fed the explicitly pruned input (weight and gain grads)
    codec = SAP(gamma=0.6, threshold="exact", values=values)
    pruned = codec.decode(codec.encode(x), x.shape, x.dtype)
    plain = NSConv2d.convert(copy.deepcopy(base), stats=stats)
    plain.weight_mask = mask
    _, _, ref = _run(plain, pruned)
    for name in ("weight", "gain", "bias"):
        assert torch.allclose(fused[2][name], ref[name], rtol=1e-4, atol=1e-6), name


def test_fused_saves_nothing_weight_sized():
    torch.manual_seed(3)
    layer = NSConv2d.convert(nn.Conv2d(16, 32, 3, padding=1))
    layer.weight_mask = torch.rand(layer.weight.shape) < 0.2
    SAP(gamma=0.5, threshold="exact").apply(layer)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    with SavedTensorMeter(exclude=layer) as meter:
        layer(x)
    values, packed = layer.input_codec.encode(x).tensors
    stats = 4 * 32 * 4  # per-channel statistics of the weight
    assert meter.bytes == values.nbytes + packed.nbytes + layer.weight_mask.nbytes + stats


@pytest.mark.parametrize("ns", [False, True])
def test_growth_capture_runs_uncompressed(ns):
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model = copy.deepcopy(conv)
    if ns:
        NSConv().apply(model)
    SAP(gamma=0.9).apply(model)
    x = torch.randn(2, 3, 6, 6)
    model.capture_effective_weight = True
    model(x).square().sum().backward()
    got = model.effective_weight.grad
    w = model.effective_weight.detach().requires_grad_()
    F.conv2d(x, w, model.bias, padding=1).square().sum().backward()
    assert torch.allclose(got, w.grad, atol=1e-6)  # dense input, not the pruned one
    model.capture_effective_weight = False
    model(x)
    assert model.effective_weight is None


@pytest.mark.parametrize("shape", [(5, 12), (2, 3, 12)])
def test_linear(shape):
    torch.manual_seed(5)
    base = nn.Linear(12, 7)
    layer = copy.deepcopy(base)
    SAP(gamma=0.5, threshold="exact", linear=True).apply(layer)
    assert type(layer) is CodecLinear
    x = torch.randn(shape)
    out, gx, grads = _run(layer, x)
    ref_out, ref_gx, _ = _run(base, x)
    assert torch.equal(out, ref_out)
    assert torch.allclose(gx, ref_gx, atol=1e-6)
    pruned = layer.input_codec.decode(layer.input_codec.encode(x), x.shape, x.dtype)
    assert int((pruned != 0).sum()) == x.numel() // 2
    _, _, ref = _run(copy.deepcopy(base), pruned)
    for name in grads:
        assert torch.allclose(grads[name], ref[name], atol=1e-6), name


class _Block(nn.Module):
    """torchvision's BasicBlock shape: downsample and conv1 read the same input."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.downsample = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False),
                                        nn.BatchNorm2d(8))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


def _tiny_resnet() -> nn.Module:
    torch.manual_seed(6)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                         nn.ReLU(inplace=True), _Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


def test_full_stack_keeps_parameters_and_trains():
    base = _tiny_resnet()
    model = copy.deepcopy(base)
    before = dict(model.named_parameters())
    kept = {f"{m}.{p}" for m, mod in base.named_modules() if not isinstance(mod, nn.BatchNorm2d)
            for p, _ in mod.named_parameters(recurse=False)}
    NSConv().apply(model)
    SAP(gamma=0.7, linear=True).apply(model)
    BitAct().apply(model)
    after = dict(model.named_parameters())
    assert all(after[name] is before[name] for name in kept)
    assert set(after) == kept | {n.replace("weight", "gain") for n in kept
                                 if isinstance(before[n], nn.Parameter) and before[n].dim() == 4}
    assert isinstance(model[3].conv1, NSConv2d) and isinstance(model[6], CodecLinear)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    with SavedTensorMeter(exclude=model) as small:
        F.cross_entropy(model(x), y).backward()
    with SavedTensorMeter(exclude=base) as large:
        F.cross_entropy(base(x), y).backward()
    assert small.bytes < 0.5 * large.bytes
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():  # evaluation runs uncompressed
        model.eval()
        assert model(x).shape == (4, 5)


def test_model_copies_and_pickles_without_the_cache():
    model = _tiny_resnet()
    SAP(gamma=0.5).apply(model)
    x = torch.randn(2, 3, 8, 8)
    model(x).sum().backward()
    codec = model[0].input_codec
    codec.encode(x)
    assert codec._cache
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone[0].input_codec is clone[3].conv1.input_codec is not codec
        assert not clone[0].input_codec._cache
        clone(x).sum().backward()


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.integers(1, 4096).flatmap(
        lambda sample: st.tuples(st.integers(sample, sample * (2**31 - 1)), st.just(sample))),
    seed=st.integers(0, 2**31 - 1),
)
def test_sample_positions_are_one_per_span_in_range(sizes, seed):
    """Exact integer positions: one in each of ``sample`` equal spans of range(n),
    so the sample never collapses onto fewer positions (float32 arithmetic did above 2**24)."""
    from fedprune_plugins.components.sap import sample_positions

    n, sample = sizes  # spans below 2**31, the documented range (2**49 entries by default)
    positions = sample_positions(n, sample, seed)
    bounds = [i * n // sample for i in range(sample + 1)]
    assert positions.dtype == torch.int64 and len(positions) == sample
    assert all(bounds[i] <= int(p) < bounds[i + 1] for i, p in enumerate(positions))


def test_sample_positions_stay_unbiased_on_tensors_of_2_25_entries_and_more():
    """The case that broke: on 2**25+ entries, a sample that lands mostly on even positions
    keeps the wrong fraction of a parity-structured input."""
    from fedprune_plugins.components.sap import sample_positions

    for n in (2**25, 2**25 + 3, 3 * 2**26 + 1):
        positions = sample_positions(n, 262_144, seed=7)
        assert positions.unique().numel() == 262_144
        odd = float((positions % 2).double().mean())
        assert abs(odd - 0.5) < 0.01, (n, odd)
