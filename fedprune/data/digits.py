"""The embedded default: scikit-learn's bundled handwritten digits (no download).

1,797 real 8x8 grey-scale images of the digits 0-9, shipped inside scikit-learn. A fixed,
stratified 80/20 split gives 1,437 training and 360 test images; pixel values 0-16 are stored as
float32 in [0, 1] and normalised with the training set's statistics.
"""

from __future__ import annotations

import numpy as np

from fedprune.data.base import ArrayDataset, DatasetSplits

TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the split is part of the dataset, not of the run: fixed for every seed


def load_digits() -> DatasetSplits:
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    mean, std = (float(x_train.mean()),), (float(x_train.std()),)
    return DatasetSplits(
        train=ArrayDataset(x_train, y_train, mean, std),
        test=ArrayDataset(x_test, y_test, mean, std),
        num_classes=10,
        name="digits",
    )
