"""Image datasets held as one array, batched by index.

Every dataset in fedprune ends up as an `ArrayDataset`: images in one (N, C, H, W) array (uint8,
possibly memory-mapped from a decode-once cache, or float32) and integer labels. A client is a
set of indices into it, so a 100-client partition shares one copy of the data, and a training
batch is one fancy-indexing gather plus vectorised augmentation: no per-image Python, no decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class ArrayDataset:
    """Images and labels in arrays; `batch` gathers, augments and normalises.

    ``mean``/``std`` are per channel, in the units of the stored images scaled to [0, 1] (uint8
    images are divided by 255 first). ``augment_pad > 0`` enables the standard training
    augmentation: random crop with that padding and a random horizontal flip (``flip``).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment_pad: int = 0,
        flip: bool = False,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.targets = np.asarray(labels, dtype=np.int64)
        self._scale = 255.0 if images.dtype == np.uint8 else 1.0
        shape = (1, images.shape[1], 1, 1)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(shape)
        self._std = torch.tensor(std, dtype=torch.float32).view(shape)
        self.augment_pad = augment_pad
        self.flip = flip

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def batch(
        self, index: np.ndarray, train: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``index`` as a normalised float batch, augmented when ``train``."""
        index = np.sort(np.asarray(index))  # sorted reads are sequential on a memory map
        x = torch.from_numpy(np.ascontiguousarray(self.images[index])).float()
        y = torch.from_numpy(self.targets[index])
        if train and (self.augment_pad or self.flip):
            x = self._augment(x, generator)
        x = (x / self._scale - self._mean) / self._std
        return x, y

    def _augment(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.augment_pad:
            p = self.augment_pad
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).tolist()
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).tolist()
            # one slice copy per image: far cheaper than a 4-D gather
            x = torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in
                             enumerate(zip(dy, dx, strict=True))])
        if self.flip:
            flip = torch.rand(n, generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x


@dataclass
class DatasetSplits:
    """What a dataset factory returns: the training and test sets and their shape."""

    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    name: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.train.input_shape
