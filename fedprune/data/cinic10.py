"""CINIC-10 from its official layout: ``CINIC-10/{train,valid,test}/<class>/*.png``.

Each split holds 90,000 32x32 PNG images, 9,000 per class, in one folder per CIFAR-10 class.
Labels follow the class names in alphabetical order (the CIFAR-10 order). Some images derived
from ImageNet are grey-scale PNGs; they are converted to RGB.

How the three splits are used: by default ``train`` is the training set and ``test`` the test
set, and ``valid`` is left out, so the test images are never seen in training and the training
set keeps the 90,000 images of the authors' equal three-way split. ``include_valid=True`` adds
``valid`` to the training set (180,000 images), for runs that do no model selection on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedprune.data.base import DatasetSplits
from fedprune.data.cache import SplitSource, cached_splits, decode_images, list_files
from fedprune.data.catalog import CINIC10, locate
from fedprune.errors import DataError
from fedprune.options import as_bool

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SPLITS = ("train", "valid", "test")


def list_split(folder: Path, split: str) -> tuple[list[Path], np.ndarray]:
    """The PNG files of one split in a fixed order (class, then file name) and their labels."""
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(CLASSES):
        class_dir = folder / split / name
        if not class_dir.is_dir():
            raise DataError(
                f"CINIC-10 layout at {folder}: {CINIC10.folder}/{split}/{name} missing "
                f"(expected {CINIC10.layout})"
            )
        pngs = list_files(class_dir, (".png",))
        if not pngs:
            raise DataError(f"{class_dir}: no .png images")
        files.extend(pngs)
        labels.extend([label] * len(pngs))
    return files, np.asarray(labels, dtype=np.int64)


def _source(folder: Path, name: str, parts: tuple[str, ...]) -> SplitSource:
    listed = [list_split(folder, part) for part in parts]
    files = [f for fs, _ in listed for f in fs]
    all_labels = np.concatenate([y for _, y in listed])

    def fill(images: np.ndarray, labels: np.ndarray) -> None:
        decode_images(files, images, CINIC10.image_size)
        labels[:] = all_labels

    return SplitSource(
        split=name, files=files, shape=(3, 32, 32), num_classes=len(CLASSES),
        count=lambda: len(files), fill=fill,
    )


def sources(
    root: str | os.PathLike[str] | None = None, include_valid: bool = False
) -> tuple[Path, dict[str, SplitSource]]:
    """The dataset folder and its splits as loaded (``train`` or ``train+valid``, ``test``)."""
    folder = locate(CINIC10, root)
    train_parts = ("train", "valid") if include_valid else ("train",)
    return folder, {
        "train": _source(folder, "+".join(train_parts), train_parts),
        "test": _source(folder, "test", ("test",)),
    }


def load_cinic10(
    root: str | os.PathLike[str] | None = None, include_valid: bool = False
) -> DatasetSplits:
    """CINIC-10, decoded once into the cache; see the module docstring for the use of ``valid``.

    ``root`` is the directory that contains ``CINIC-10/`` (default: ``$FEDPRUNE_DATA``, else
    ``~/.cache/fedprune/data``). Training images get random crops with 4-pixel padding and
    horizontal flips; both splits are normalised with CINIC-10's channel statistics.
    """
    folder, splits = sources(root, as_bool(include_valid, "cinic10.include_valid"))
    return cached_splits(CINIC10, folder, splits)
