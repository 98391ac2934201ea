"""Random images of any shape: for measuring memory and speed where the data does not matter.

Standard-normal float32 images with uniformly random labels, drawn from a fixed seed: activation
sizes do not depend on the data, and SAP keeps a fixed fraction of any input.
"""

from __future__ import annotations

import numpy as np

from fedprune.data.base import ArrayDataset, DatasetSplits
from fedprune.errors import FedpruneError


def parse_shape(shape: str | tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    """``"3,32,32"`` (or a sequence) as a (C, H, W) tuple of positive sizes."""
    try:
        values = tuple(int(v) for v in (shape.split(",") if isinstance(shape, str) else shape))
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise FedpruneError(f"{shape!r} is not C,H,W: three positive integers, e.g. 3,32,32")
    return values


def load_synthetic(
    shape: str | tuple[int, ...] = "3,32,32", classes: int = 10, size: int = 640,
    test_size: int = 64, seed: int = 0,
) -> DatasetSplits:
    """``size`` training and ``test_size`` test images of ``shape`` over ``classes`` labels."""
    c, h, w = parse_shape(shape)
    if classes < 1 or size < 1 or test_size < 1:
        raise FedpruneError("synthetic: classes, size and test_size must be at least 1")
    rng = np.random.default_rng(seed)

    def split(n: int) -> ArrayDataset:
        images = rng.standard_normal((n, c, h, w), dtype=np.float32)
        labels = rng.integers(classes, size=n)
        return ArrayDataset(images, labels, (0.0,) * c, (1.0,) * c)

    return DatasetSplits(split(size), split(test_size), classes, name="synthetic")
