"""The small default CNN: three 3x3 conv layers (width, 2*width, 4*width) and a classifier."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Sequential):
    """Conv-BN-ReLU x3 with a 2x2 max-pool after the second, global average pool, linear.

    Sized for the 8x8 digits and 32x32 images alike: global pooling makes it input-size agnostic.
    BatchNorm keeps the signal alive at low density (and is what NSConv replaces).
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], width: int = 32):
        c = input_shape[0]
        super().__init__(
            nn.Conv2d(c, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, num_classes),
        )
