"""CIFAR-10 from the official "python version": pickled batches in ``cifar-10-batches-py/``.

Each of ``data_batch_1`` .. ``data_batch_5`` (training, 10,000 images each) and ``test_batch``
(10,000 images) is a pickled dict with ``data`` (uint8, N x 3072, the red, green and blue planes
of a 32x32 image in row-major order, which is exactly NCHW) and ``labels``; ``batches.meta``
holds the ``label_names``. The pickles are read with an unpickler that accepts only the numpy
objects the format needs, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import functools
import importlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from fedprune.data.base import DatasetSplits
from fedprune.data.cache import SplitSource, cached_splits
from fedprune.data.catalog import CIFAR10, locate
from fedprune.errors import DataError

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"


def _multiarray() -> Any:
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        return importlib.import_module("numpy.core.multiarray")


class _ForeignObject(pickle.UnpicklingError):
    """The pickle names a global that no CIFAR batch contains."""


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR batch contains: numpy arrays and dtypes, and bytes."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
            "_reconstruct",
            "scalar",
        ):
            return getattr(_multiarray(), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # bytes pickled by Python 3, protocol 2
            return codecs.encode
        raise _ForeignObject(f"{module}.{name}")


def read_batch(path: Path) -> dict[str, Any]:
    """One pickled batch as a dict with str keys; `DataError` naming the file if it is damaged."""
    try:
        with open(path, "rb") as f:
            raw = _BatchUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    except _ForeignObject as exc:
        raise DataError(
            f"{path}: refused to unpickle: it refers to {exc}, which no CIFAR-10 batch contains"
        ) from None
    except Exception as exc:  # truncated or corrupt pickles raise many different types
        reason = f"{type(exc).__name__}: {exc}"
        raise DataError(f"{path}: corrupt or truncated pickle ({reason})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(raw).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _read_images(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = read_batch(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: not a CIFAR-10 batch (keys {sorted(map(str, batch))})")
    data, labels = batch["data"], _int_array(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, 3072)")
    if labels is None:
        raise DataError(f"{path}: 'labels' must be a list of integers")
    if data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(
            f"{path}: 'data' has shape {data.shape} and {len(labels)} labels; "
            "expected (N, 3072) and N labels"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _int_array(value: Any) -> np.ndarray | None:
    """``value`` as a 1-D int64 array if it is a sequence of integers, else None."""
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nesting
        return None
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        return None
    return array.astype(np.int64)


def read_label_names(folder: Path) -> list[str]:
    meta = read_batch(folder / META_FILE)
    names = meta.get("label_names")
    if not isinstance(names, list) or not names:
        raise DataError(f"{folder / META_FILE}: no 'label_names' list")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


def _source(folder: Path, split: str, files: tuple[str, ...], num_classes: int) -> SplitSource:
    paths = [folder / name for name in files]

    @functools.cache
    def batches() -> list[tuple[np.ndarray, np.ndarray]]:
        return [_read_images(p, num_classes) for p in paths]

    def fill(images: np.ndarray, labels: np.ndarray) -> None:
        start = 0
        for data, y in batches():
            images[start : start + len(y)] = data
            labels[start : start + len(y)] = y
            start += len(y)
        batches.cache_clear()

    return SplitSource(
        split=split,
        files=paths,
        shape=(3, 32, 32),
        num_classes=num_classes,
        count=lambda: sum(len(y) for _, y in batches()),
        fill=fill,
    )


def sources(root: str | os.PathLike[str] | None = None) -> tuple[Path, dict[str, SplitSource]]:
    """The dataset folder and its splits (``train``, ``test``), without decoding anything."""
    folder = locate(CIFAR10, root)
    n = len(read_label_names(folder))
    if n != CIFAR10.num_classes:
        raise DataError(f"{folder / META_FILE}: {n} label names, expected {CIFAR10.num_classes}")
    return folder, {
        "train": _source(folder, "train", TRAIN_FILES, n),
        "test": _source(folder, "test", TEST_FILES, n),
    }


def load_cifar10(root: str | os.PathLike[str] | None = None) -> DatasetSplits:
    """CIFAR-10 (50,000 training and 10,000 test images), decoded once into the cache.

    ``root`` is the directory that contains ``cifar-10-batches-py/`` (default: ``$FEDPRUNE_DATA``,
    else ``~/.cache/fedprune/data``). Training images get the standard augmentation (random crop
    with 4-pixel padding, horizontal flip); both splits are normalised with CIFAR-10's statistics.
    """
    folder, splits = sources(root)
    return cached_splits(CIFAR10, folder, splits)
