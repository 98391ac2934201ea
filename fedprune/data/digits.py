"""The embedded default: the UCI handwritten digits, shipped inside fedprune (no download).

1,797 real 8x8 grey-scale images of the digits 0-9 (E. Alpaydin and C. Kaynak, "Optical
Recognition of Handwritten Digits", UCI Machine Learning Repository, CC BY 4.0), the same array
scikit-learn ships as ``load_digits``, in ``digits.npz`` (48 kB) with a fixed stratified 80/20
split (scikit-learn's ``train_test_split(..., stratify=labels, random_state=0)``, stored as
indices, so loading needs neither scikit-learn nor its 2 s import): 1,437 training and 360 test
images. Pixel values 0-16 are stored as float32 in [0, 1] and normalised with the training set's
statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedprune.data.base import ArrayDataset, DatasetSplits

FILE = Path(__file__).with_name("digits.npz")


def load_digits() -> DatasetSplits:
    with np.load(FILE) as stored:
        images = (stored["images"] / 16.0).astype(np.float32)[:, None, :, :]
        labels = stored["labels"].astype(np.int64)
        train, test = stored["train"].astype(np.int64), stored["test"].astype(np.int64)
    x_train = images[train]
    mean, std = (float(x_train.mean()),), (float(x_train.std()),)
    return DatasetSplits(
        train=ArrayDataset(x_train, labels[train], mean, std),
        test=ArrayDataset(images[test], labels[test], mean, std),
        num_classes=10,
        name="digits",
    )
