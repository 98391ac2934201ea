"""The 3-stage CIFAR ResNet that the FedMef authors' library trains under the name "resnet18".

Their benchmark suite (FedPruning), whose numbers later papers of this line reuse, builds for
CIFAR a ResNet with a 3x3 stem of 16 channels, three stages of 16, 32 and 64 channels with two
basic blocks each (stride 2 at the start of stages 2 and 3, 1x1 convolution + BatchNorm
shortcuts where the shape changes), global average pooling and a linear classifier: 175,258
parameters for 10 classes, against 11.2M for the ImageNet-style ResNet18 (`resnet18` here).
Memory and accuracy figures are comparable with theirs only on this network, so it is built in
under an honest name, ``cifar_resnet``. Blocks are torchvision's ``BasicBlock``; weights are
initialised as torchvision's ResNets (Kaiming normal, fan-out).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock


def cifar_resnet(
    num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), width: int = 16,
    blocks: int = 2,
) -> nn.Sequential:
    """Stem, three stages of ``blocks`` basic blocks (``width``, 2x, 4x channels), classifier."""
    layers: list[nn.Module] = [
        nn.Conv2d(int(input_shape[0]), width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    ]
    channels = width
    for stage in range(3):
        out = width * 2**stage
        for index in range(blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            downsample = None
            if stride != 1 or channels != out:
                downsample = nn.Sequential(
                    nn.Conv2d(channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            layers.append(BasicBlock(channels, out, stride, downsample))
            channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    model = nn.Sequential(*layers)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
