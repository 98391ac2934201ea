"""Measured memory: storage formats, the saved-tensor meter, RSS sampling, a full training step."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fedprune.formats import FORMATS, format_bytes, storage_bytes
from fedprune.memory import (
    MemoryReport,
    PeakRSS,
    SavedTensorMeter,
    account_saved,
    measure_training_step,
    params_bytes,
)
from fedprune.models.resnet import resnet18

MiB = 2**20


def spec_costs(numel, nnz, rows, bits):
    """The four formats written out from their definitions."""
    vals = math.ceil(nnz * bits / 8)
    return {
        "dense": math.ceil(numel * bits / 8),
        "bitmap": math.ceil(numel / 8) + vals,
        "coo": vals + 4 * nnz,
        "csr": vals + 4 * nnz + 4 * (rows + 1),
    }


# -- storage formats ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("density", "expected"),
    [
        (1.0, "dense"),
        (0.98, "dense"),
        (0.9, "bitmap"),
        (0.5, "bitmap"),
        (0.1, "bitmap"),
        (0.03, "coo"),
        (0.001, "coo"),
        (0.0, "coo"),
    ],
)
def test_storage_format_regimes(density, expected):
    shape = (64, 64, 3, 3)
    numel = math.prod(shape)
    nnz = round(density * numel)
    fmt, nbytes = storage_bytes(numel, nnz, shape)
    assert fmt == expected
    assert nbytes == format_bytes(fmt, numel, nnz, shape)
    assert nbytes <= 4 * numel


def test_storage_thresholds_32_bit():
    # dense below d = 31/32, COO below d = 1/32 (exactly at the threshold the simpler format wins)
    n = 32 * 1024
    assert storage_bytes(n, 31 * 1024, (n,))[0] == "dense"
    assert storage_bytes(n, 31 * 1024 - 1, (n,))[0] == "bitmap"
    assert storage_bytes(n, 1024, (n,))[0] == "bitmap"
    assert storage_bytes(n, 1023, (n,))[0] == "coo"


def test_bitmap_at_target_density_beats_coo():
    # d = 0.1 on ResNet18-sized layers: bitmap 0.525 n bytes, COO 0.8 n bytes.
    numel = 512 * 512 * 9
    nnz = numel // 10
    assert storage_bytes(numel, nnz, (512, 512, 3, 3)) == ("bitmap", numel // 8 + 4 * nnz)
    assert format_bytes("coo", numel, nnz, (512,)) == 8 * nnz


def test_csr_costs_more_than_flat_coo():
    for rows, nnz in [(1, 0), (10, 5), (512, 1000)]:
        csr = format_bytes("csr", 10_000, nnz, (rows,))
        assert csr - format_bytes("coo", 10_000, nnz, (rows,)) == 4 * (rows + 1)


def test_format_bytes_rejects_bad_input():
    with pytest.raises(ValueError):
        format_bytes("coo", 10, 11, (10,))
    with pytest.raises(ValueError):
        format_bytes("ell", 10, 1, (10,))


@given(
    numel=st.integers(1, 10**8),
    frac=st.floats(0, 1),
    rows=st.integers(1, 4096),
    bits=st.sampled_from([1, 8, 16, 32, 64]),
)
def test_storage_is_min_over_formats(numel, frac, rows, bits):
    nnz = min(numel, int(frac * numel))
    costs = spec_costs(numel, nnz, rows, bits)
    fmt, nbytes = storage_bytes(numel, nnz, (rows, max(1, numel // rows)), bits)
    assert nbytes == min(costs.values())
    assert costs[fmt] == nbytes
    assert nbytes <= costs["dense"]
    assert set(costs) == set(FORMATS)


# -- params_bytes -------------------------------------------------------------------------------


def test_params_bytes_dense_and_masked():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 50), nn.BatchNorm1d(50), nn.Linear(50, 10))
    # 5000 + 50 + 50 + 50 + 500 + 10 params, BN buffers: 2 x 50 float + one int64 counter.
    dense = 4 * (5000 + 50 + 50 + 50 + 500 + 10) + 4 * 100 + 8
    assert params_bytes(model) == dense
    assert params_bytes(model, {}) == dense

    mask = torch.zeros(50, 100, dtype=torch.bool)
    mask.view(-1)[:500] = True  # density 0.1: bitmap, 5000/8 + 4*500 bytes
    masked = params_bytes(model, {"0.weight": mask})
    assert masked == dense - 4 * 5000 + (625 + 2000)
    assert masked < dense


def test_params_bytes_masks_shrink_resnet():
    model = resnet18(10, (3, 32, 32))
    dense = params_bytes(model)
    assert 42 * MiB < dense < 43 * MiB  # 11.17 M float32 parameters plus BN buffers
    gen = torch.Generator().manual_seed(0)
    masks = {
        name: torch.rand(p.shape, generator=gen) < 0.1
        for name, p in model.named_parameters()
        if p.dim() > 1
    }
    sparse = params_bytes(model, masks)
    assert 0.12 * dense < sparse < 0.15 * dense  # ~0.525 n bytes at d = 0.1 against 4 n


def test_params_bytes_rejects_unknown_or_misshaped_masks():
    model = nn.Linear(4, 3)
    with pytest.raises(KeyError):
        params_bytes(model, {"nope": torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(ValueError):
        params_bytes(model, {"weight": torch.ones(4, 3, dtype=torch.bool)})


# -- SavedTensorMeter ---------------------------------------------------------------------------


def test_meter_counts_non_parameter_operand_only():
    layer = nn.Linear(5, 4)  # only its parameters matter here
    w = layer.weight
    x = torch.randn(4, 5, requires_grad=True)
    with SavedTensorMeter(exclude=layer) as meter:
        y = x * w  # saves x (for w's grad) and w (for x's grad)
    assert meter.bytes == x.numel() * 4 == 80
    y.sum().backward()
    assert torch.equal(x.grad, w.detach())
    assert torch.equal(w.grad, x.detach())


def test_meter_without_exclusion_counts_both():
    w = nn.Parameter(torch.randn(4, 5))
    x = torch.randn(4, 5, requires_grad=True)
    with SavedTensorMeter() as meter:
        x * w
    assert meter.bytes == 160


def test_views_of_one_storage_count_once():
    base = torch.randn(8, 16, requires_grad=True)
    with SavedTensorMeter() as meter:
        a = torch.sin(base)  # saves base
        b = torch.cos(base.t())  # saves a view of base
        c = base[:2] * base[2:4]  # saves two slices of base
        (a.sum() + b.sum() + c.sum()).backward()
    assert meter.bytes == base.numel() * 4


def test_meter_counts_whole_storage_of_a_view():
    big = torch.randn(1000, requires_grad=True)
    part = big[:10]
    with SavedTensorMeter() as meter:
        part.exp()  # exp saves its result: a fresh 10-element tensor
        part.sin()  # sin saves its input: a view that keeps all of `big` alive
    assert meter.bytes == 10 * 4 + 1000 * 4


def test_meter_gradients_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    x = torch.randn(2, 3, 8, 8)
    model(x).sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with SavedTensorMeter(exclude=model) as meter:
        model(x).sum().backward()
    assert meter.bytes > 0
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_meter_removes_its_hook():
    x = torch.randn(10, requires_grad=True)
    with SavedTensorMeter() as meter:
        x.sin()
    counted = meter.bytes
    x.cos()
    assert meter.bytes == counted
    with pytest.raises(RuntimeError):
        with SavedTensorMeter() as failing:
            x.sin()
            raise RuntimeError("boom")
    x.cos()
    assert failing.bytes == 40
    account_saved(torch.ones(100))  # no active meter: nothing to add to, no error


class _KeepsOnCtx(torch.autograd.Function):
    """Keeps its input on ctx instead of save_for_backward, as compressors may."""

    @staticmethod
    def forward(ctx, x):
        ctx.kept = x.detach().clone()
        account_saved(ctx.kept)
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2 + 0 * ctx.kept


def test_account_saved_adds_to_innermost_meter_only():
    x = torch.randn(25, requires_grad=True)
    with SavedTensorMeter() as outer:
        with SavedTensorMeter() as inner:
            y = _KeepsOnCtx.apply(x)
        account_saved(torch.ones(3))
    assert inner.bytes == 100
    assert outer.bytes == 12
    y.sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))


def test_account_saved_dedups_with_pack_hook_and_exclusions():
    layer = nn.Linear(3, 3)
    x = torch.randn(3, 3, requires_grad=True)
    with SavedTensorMeter(exclude=layer) as meter:
        x.sin()
        account_saved(x)  # already saved by sin
        account_saved(x[1])  # a view of it
        account_saved(layer.weight)  # the model's own storage
    assert meter.bytes == 36


def test_meter_recounts_a_freed_and_reused_address():
    # Two storages over one buffer, one after the other: the second has the first's address.
    buffer = bytearray(2048)
    with SavedTensorMeter() as meter:
        first = torch.frombuffer(buffer, dtype=torch.float32)
        ptr = first.data_ptr()
        meter.add(first)
        meter.add(first[:10])  # alive: counted once
        del first
        second = torch.frombuffer(buffer, dtype=torch.float32)
        assert second.data_ptr() == ptr
        meter.add(second)
    assert meter.bytes == 2 * 2048


def test_resnet18_saved_activations_plausible_and_linear():
    torch.manual_seed(0)
    model = resnet18(10, (3, 32, 32)).train()
    counts = {}
    for batch in (4, 8):
        x = torch.randn(batch, 3, 32, 32)
        with SavedTensorMeter(exclude=model) as meter:
            model(x).sum().backward()
        counts[batch] = meter.bytes
    # ~287 MiB at batch 64 gives ~36 MiB at batch 8.
    assert 30 * MiB < counts[8] < 42 * MiB
    assert counts[8] / counts[4] == pytest.approx(2.0, rel=0.02)


# -- PeakRSS ------------------------------------------------------------------------------------


def test_peak_rss_sees_a_large_allocation():
    from fedprune.memory import _release_free_heap

    _release_free_heap()  # else freed pages still resident could serve part of the block
    with PeakRSS() as rss:
        block = torch.ones(64 * MiB // 4)  # 64 MiB, touched
    assert rss.delta_bytes > 48 * MiB
    assert rss.peak_bytes >= rss.entry_bytes
    del block


# -- measure_training_step ----------------------------------------------------------------------


def test_measure_training_step_totals_and_restores_model():
    torch.manual_seed(0)
    model = resnet18(10, (1, 8, 8)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])

    report = measure_training_step(model, x, y)
    assert isinstance(report, MemoryReport)
    d = report.as_dict()
    assert set(d) == {
        "params_bytes",
        "activation_bytes",
        "total_bytes",
        "grad_bytes",
        "optimizer_bytes",
        "peak_rss_delta_bytes",
        "cuda_peak_bytes",
    }
    n = sum(p.numel() for p in model.parameters())
    assert report.params_bytes == params_bytes(model)
    assert report.total_bytes == report.params_bytes + report.activation_bytes
    assert report.grad_bytes == 4 * n
    assert report.optimizer_bytes == 4 * n  # one momentum buffer per parameter
    assert report.activation_bytes > 0
    assert report.peak_rss_delta_bytes >= 0
    assert report.cuda_peak_bytes is None

    # A probe: weights, BN statistics, gradients and mode are as before.
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training

    # Deterministic count; masks shrink only the parameter term.
    masks = {name: torch.rand(p.shape) < 0.1 for name, p in model.named_parameters() if p.dim() > 1}
    masked = measure_training_step(model, x, y, masks=masks)
    assert masked.activation_bytes == report.activation_bytes
    assert masked.params_bytes < report.params_bytes / 5
    assert masked.total_bytes == masked.params_bytes + masked.activation_bytes
