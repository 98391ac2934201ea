"""The small-image ResNet18 and MobileNetV2: shapes, sizes, structure, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedprune.models.mobilenet import mobilenetv2
from fedprune.models.resnet import resnet18

FACTORIES = {"resnet18": resnet18, "mobilenetv2": mobilenetv2}
SHAPES = [(1, 8, 8), (3, 32, 32), (3, 64, 64)]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", FACTORIES)
def test_output_shape(name, shape):
    model = FACTORIES[name](7, shape)
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("name", FACTORIES)
def test_backward(name):
    torch.manual_seed(0)
    model = FACTORIES[name](7, (1, 8, 8))
    loss = nn.functional.cross_entropy(model(torch.randn(2, 1, 8, 8)), torch.tensor([0, 6]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_parameter_counts():
    # ResNet18-CIFAR: 11,173,962 for 10 classes; MobileNetV2 (torchvision widths): 2,236,682.
    assert n_params(resnet18(10, (3, 32, 32))) == 11_173_962
    assert n_params(mobilenetv2(10, (3, 32, 32))) == 2_236_682
    # One input channel changes only the stem: 64 * (3 - 1) * 9 and 32 * (3 - 1) * 9 fewer.
    assert n_params(resnet18(10, (1, 8, 8))) == 11_173_962 - 64 * 2 * 9
    assert n_params(mobilenetv2(10, (1, 8, 8))) == 2_236_682 - 32 * 2 * 9


def test_small_image_stems():
    r = resnet18(10, (1, 8, 8))
    assert r.conv1.in_channels == 1
    assert r.conv1.kernel_size == (3, 3) and r.conv1.stride == (1, 1)
    assert isinstance(r.maxpool, nn.Identity)
    assert r.fc.out_features == 10

    m = mobilenetv2(10, (1, 8, 8))
    stem = m.features[0][0]
    assert stem.in_channels == 1 and stem.stride == (1, 1)
    assert m.features[2].conv[1][0].stride == (2, 2)  # first block of the 24-channel stage
    assert m.classifier[-1].out_features == 10
    assert mobilenetv2(10, stage2_stride=1).features[2].conv[1][0].stride == (1, 1)


def test_feature_map_sizes_at_32x32():
    x = torch.randn(1, 3, 32, 32)
    r = resnet18(10).eval()
    with torch.no_grad():
        feats = r.layer4(r.layer3(r.layer2(r.layer1(r.relu(r.bn1(r.conv1(x)))))))
    assert feats.shape[-2:] == (4, 4)
    with torch.no_grad():
        assert mobilenetv2(10).eval().features(x).shape[-2:] == (2, 2)
        assert mobilenetv2(10, stage2_stride=1).eval().features(x).shape[-2:] == (4, 4)


@pytest.mark.parametrize("name", FACTORIES)
def test_made_of_standard_modules(name):
    """Transforms replace nn.Conv2d / nn.BatchNorm2d by type, so every conv must be exactly one."""
    model = FACTORIES[name](10, (3, 32, 32))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is nn.Conv2d for m in convs)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(convs)  # every conv is followed by BatchNorm
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    assert acts and all(m.inplace for m in acts)  # torchvision's in-place baseline
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("name", FACTORIES)
def test_deterministic_given_seed(name):
    torch.manual_seed(123)
    a = FACTORIES[name](10, (3, 32, 32)).state_dict()
    torch.manual_seed(123)
    b = FACTORIES[name](10, (3, 32, 32)).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(124)
    c = FACTORIES[name](10, (3, 32, 32)).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_registered_factories_build_these_models():
    from fedprune.builtins import _mobilenetv2, _resnet18

    assert n_params(_resnet18(10, (3, 32, 32))) == 11_173_962
    assert n_params(_mobilenetv2(10, (1, 8, 8))) == 2_236_682 - 32 * 2 * 9


def test_the_cifar_resnet_is_the_fedmef_libraries_resnet18():
    from fedprune.models.cifar_resnet import cifar_resnet

    model = cifar_resnet(10, (3, 32, 32))
    assert sum(p.numel() for p in model.parameters()) == 175_258
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs[:1]] == [16] and convs[-1].out_channels == 64
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
