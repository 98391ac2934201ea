"""bitact: ReLU / ReLU6 keeping 1 bit per entry, with gradients bit-identical to torch's."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedprune.memory import SavedTensorMeter
from fedprune.ops.bits import pack_bits, unpack_bits
from fedprune.testing import check_component
from fedprune_plugins import compact_activations
from fedprune_plugins.components.bitact import (
    BitAct,
    BitHardtanh,
    BitReLU,
    BitReLU6,
)


def test_registered_as_activation_compressor():
    (component,) = compact_activations.fedprune_activation_compressors()
    assert component.name == "bitact" and component.options() == {}


def test_meets_the_activation_compressor_contract(fedprune_pm):
    check_component(fedprune_pm, "bitact")


@settings(max_examples=50, deadline=None)
@given(bits=st.lists(st.booleans(), min_size=0, max_size=70))
def test_pack_roundtrip(bits):
    mask = torch.tensor(bits, dtype=torch.bool)
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(len(bits) / 8)
    assert torch.equal(unpack_bits(packed, len(bits)), mask)


def _inputs(shape, seed):
    """Values that hit every branch: negatives, exact 0 and -0, inside, exact 6, above 6."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 5 + 2
    special = torch.tensor([0.0, -0.0, 6.0, 6.0, 0.0, 1e-30, -1e-30, 6.000001, 5.999999])
    flat = x.view(-1)
    pick = torch.randint(flat.numel(), (min(flat.numel(), 9),), generator=g)
    flat[pick] = special[: pick.numel()]
    return x


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=4).map(tuple),
    kind=st.sampled_from(["relu", "relu6", "hardtanh"]),
    inplace=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_bit_exact_against_torch(shape, kind, inplace, seed):
    make = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardtanh": lambda inplace: nn.Hardtanh(
        -1.5, 2.0, inplace)}[kind]
    ref_module = make(inplace=inplace)
    ours = copy.deepcopy(ref_module)
    BitAct().apply(ours)
    assert type(ours) in (BitReLU, BitReLU6, BitHardtanh)
    x = _inputs(shape, seed)
    grad = torch.randn(shape)
    results = []
    for module in (ref_module, ours):
        leaf = x.clone().requires_grad_()
        out = module(leaf * 1.0)  # a non-leaf, so in-place is allowed
        out.backward(grad)
        results.append((out.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("module", [nn.ReLU(), nn.ReLU6(), nn.ReLU(inplace=True),
                                    nn.ReLU6(inplace=True)])
def test_boundaries_and_nan(module):
    x = torch.tensor([-1.0, -0.0, 0.0, 3.0, 6.0, 7.0, float("nan"), float("inf"), -float("inf")])
    grad = torch.arange(1.0, 10.0)
    ours = copy.deepcopy(module)
    BitAct().apply(ours)
    outs = []
    for m in (module, ours):
        leaf = x.clone().requires_grad_()
        out = m(leaf.clone())
        out.backward(grad)
        outs.append((out.detach(), leaf.grad))
    assert torch.equal(outs[0][0].nan_to_num(-7), outs[1][0].nan_to_num(-7))
    assert torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("cls", [nn.ReLU, nn.ReLU6])
@pytest.mark.parametrize("inplace", [False, True])
def test_saves_one_bit_per_entry(cls, inplace):
    module = cls(inplace=inplace)
    BitAct().apply(module)
    x = torch.randn(3, 5, 7, 11, requires_grad=True)
    with SavedTensorMeter() as meter:
        module(x * 2)
    assert meter.bytes == math.ceil(x.numel() / 8)


def test_apply_swaps_classes_only():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Sequential(nn.ReLU6()),
                          nn.Tanh(), nn.Flatten(), nn.LazyLinear(2))
    before = list(model.named_modules())
    BitAct().apply(model)
    after = list(model.named_modules())
    assert [(n, id(m)) for n, m in before] == [(n, id(m)) for n, m in after]
    assert type(model[1]) is BitReLU and model[1].inplace
    assert type(model[2][0]) is BitReLU6 and isinstance(model[2][0], nn.ReLU6)
    assert type(model[3]) is nn.Tanh
    assert model(torch.randn(2, 3, 5, 5)).shape == (2, 2)


def test_no_grad_uses_torch_directly():
    module = nn.ReLU6()
    BitAct().apply(module)
    x = torch.randn(10)
    with torch.no_grad():
        assert torch.equal(module(x), torch.clamp(x, 0, 6))
