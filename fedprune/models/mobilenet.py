"""MobileNetV2 for small images.

Built from torchvision's constructor, so blocks, initialisation and module types are torchvision's.
ImageNet's MobileNetV2 downsamples 32x; on a 32x32 input that leaves 1x1 maps. fedprune's default
(the stem-only adaptation, the form FedMef-style memory figures are measured on) downsamples 16x:

- stem: 3x3 convolution with stride 1 (was 2) and ``input_shape[0]`` input channels;
- classifier: torchvision's ``Dropout(0.2)`` then ``Linear(1280, num_classes)``.

``stage2_stride=1`` also runs the second stage (expansion 6, 24 channels) at stride 1, the other
common CIFAR adaptation (8x downsampling, 4x4 at the end): about 3x the activation memory and
~10x the CPU time of the default. Strides only change feature-map sizes, so the parameter count is
torchvision's either way: 2,236,682 for 10 classes.

Activations are torchvision's in-place ``nn.ReLU6``. This is the baseline form and it matters for
memory: autograd keeps a full-size copy of each ReLU6 input for backward (in-place ReLU6 clones its
input; the out-of-place form keeps the input itself, at the same cost), about 31% of this model's
saved activations at 32x32. Components that keep a 1-bit mask instead are measured against it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models import MobileNetV2
from torchvision.models import mobilenet_v2 as _tv_mobilenet_v2


def cifar_inverted_residual_setting(stage2_stride: int = 2) -> list[list[int]]:
    """torchvision's (t, c, n, s) block setting with the second stage's stride replaced."""
    return [
        [1, 16, 1, 1],
        [6, 24, 2, stage2_stride],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]


def mobilenetv2(
    num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), *, stage2_stride: int = 2
) -> MobileNetV2:
    """MobileNetV2 with a stride-1 stem (``stage2_stride=1``: a stride-1 second stage too).

    ``input_shape`` is (C, H, W); only C shapes the network. Deterministic given
    ``torch.manual_seed``; the new stem convolution is initialised like torchvision's others
    (Kaiming normal, fan-out). See the module docstring for the variants and the ReLU6 memory cost.
    """
    in_channels = int(input_shape[0])
    model = _tv_mobilenet_v2(
        weights=None,
        num_classes=num_classes,
        inverted_residual_setting=cifar_inverted_residual_setting(stage2_stride),
    )
    stem = model.features[0]
    out_channels = stem[0].out_channels
    stem[0] = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(stem[0].weight, mode="fan_out")
    return model
