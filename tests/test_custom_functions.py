"""The custom autograd functions (NSConv's convolution, SAP's codec, 1-bit activations) on the
inputs torch's own layers take: unbatched (C, H, W) images and autocast. Under autocast they
compute in the autocast dtype and give gradients in the parameters' dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

PARTS = [("nsconv", "model_transform", {}), ("sap", "activation_compressor", {"gamma": 0.5}),
         ("bitact", "activation_compressor", {})]


def converted(pm, name, kind, options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU6(), nn.Conv2d(8, 4, 3))
    part = pm.registry.get(name, kind).build(**options)
    part.apply(model)
    if kind == "activation_compressor":
        part.calibrate(model, torch.randn(2, 3, 8, 8))
    return model.train()


def gradients(model, x, autocast=False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    out.float().square().sum().backward()
    return out, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(("name", "kind", "options"), PARTS)
def test_an_unbatched_image_trains_as_a_batch_of_one(pm, name, kind, options):
    model = converted(pm, name, kind, options)
    x = torch.randn(3, 8, 8)
    out, grads = gradients(model, x)
    batched, expected = gradients(model, x[None])
    assert out.shape == batched.shape[1:]
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "kind", "options"), PARTS)
def test_under_autocast_the_gradients_keep_the_parameters_dtype(pm, name, kind, options):
    model = converted(pm, name, kind, options)
    x = torch.randn(4, 3, 8, 8)
    out, grads = gradients(model, x, autocast=True)
    _, exact = gradients(model, x)
    assert out.dtype == torch.bfloat16
    for got, want in zip(grads, exact, strict=True):
        assert got.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert cosine > 0.98  # bfloat16 rounding, not a different gradient
