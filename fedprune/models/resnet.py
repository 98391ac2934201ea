"""ResNet18 for small images (the CIFAR variant used throughout the federated pruning literature).

Built from torchvision's constructor so the block structure, initialisation and module types stay
the standard ones; only the stem changes. Small inputs (8x8 to 64x64) would lose most of their
resolution to ImageNet's 7x7 stride-2 stem and 3x3 stride-2 max-pool, so the stem is a 3x3
stride-1 convolution and the max-pool is removed: a 32x32 input reaches the last stage at 4x4.

The model is made of plain ``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.ReLU`` and ``nn.Linear`` modules
(no fused or functional layers), so model transforms that swap those modules (NSConv replaces each
``nn.Conv2d`` and drops each ``nn.BatchNorm2d``) cover every layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models import ResNet
from torchvision.models import resnet18 as _tv_resnet18


def resnet18(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> ResNet:
    """ResNet18 with a 3x3 stride-1 stem, no max-pool and ``input_shape[0]`` input channels.

    ``input_shape`` is (C, H, W); only C shapes the network (the global average pool accepts any
    H, W >= 1). Parameters: 11,173,962 for 10 classes and 3 channels. Deterministic given
    ``torch.manual_seed``: every weight comes from torch's default generator, and the new stem is
    initialised like torchvision's other convolutions (Kaiming normal, fan-out).

    The in-place ``nn.ReLU`` modules are torchvision's. In-place ReLU saves its output for backward,
    which the following convolution saves anyway, so ReLU adds activation memory only where no
    convolution follows (the last one, before pooling: under 1% of the saved bytes at 32x32).
    """
    in_channels = int(input_shape[0])
    model = _tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
