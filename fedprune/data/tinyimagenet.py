"""TinyImageNet-200 from its official layout in ``tiny-imagenet-200/``.

- ``wnids.txt``: the 200 WordNet ids, one per line. Labels are the ids in sorted order (the
  order of the ``train/`` folders), so they do not depend on the line order of the file.
- ``words.txt``: names of all WordNet ids (not needed for training; not required).
- ``train/<wnid>/images/*.JPEG``: 500 training images per class.
- ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (tab-separated: file name, wnid, box):
  10,000 labelled images, used as the test split.
- ``test/images/``: 10,000 images without labels; not used.

All images are 64x64 JPEGs; some are grey-scale and are converted to RGB. Training images get
random crops with 8-pixel padding (the CIFAR-10 ratio of 4/32 scaled to 64 pixels) and horizontal
flips; both splits are normalised with TinyImageNet's channel statistics.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from fedprune.data.base import DatasetSplits
from fedprune.data.cache import SplitSource, cached_splits, decode_images, list_files
from fedprune.data.catalog import TINYIMAGENET, locate
from fedprune.errors import DataError

F = TINYIMAGENET.folder


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; `DataError` naming it if it cannot be read or decoded."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.start}); restore the official file (move {F} "
            "away and run: fedprune data download tinyimagenet)"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def read_wnids(folder: Path) -> list[str]:
    """The class ids of ``wnids.txt``, sorted."""
    path = folder / "wnids.txt"
    wnids = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not wnids:
        raise DataError(f"{path}: no class ids")
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{path}: duplicate class ids")
    # Each id names a folder under train/: nothing that could point elsewhere.
    if bad := next((w for w in wnids if not re.fullmatch(r"[\w-]+", w)), None):
        raise DataError(f"{path}: {bad!r} is not a class id (letters, digits, '_' and '-' only)")
    return sorted(wnids)


def list_train(folder: Path, wnids: list[str]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            raise DataError(f"TinyImageNet layout at {folder}: {F}/train/{wnid}/images missing")
        jpegs = list_files(images, (".jpeg", ".jpg"))
        if not jpegs:
            raise DataError(f"{images}: no JPEG images")
        files.extend(jpegs)
        labels.extend([label] * len(jpegs))
    return files, np.asarray(labels, dtype=np.int64)


def list_val(folder: Path, wnids: list[str]) -> tuple[list[Path], np.ndarray]:
    """The labelled validation images listed in ``val_annotations.txt``, sorted by file name."""
    annotations = folder / "val" / "val_annotations.txt"
    images = folder / "val" / "images"
    present = {p.name for p in list_files(images, (".jpeg", ".jpg"))}
    index = {wnid: i for i, wnid in enumerate(wnids)}
    labelled: dict[str, int] = {}
    text = read_text(annotations)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"{annotations}, line {lineno}: expected '<file>\\t<wnid>\\t...'")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DataError(f"{annotations}, line {lineno}: {wnid} is not in wnids.txt")
        if name not in present:
            raise DataError(f"{F}/val/images/{name} missing (listed in val_annotations.txt)")
        labelled[name] = index[wnid]
    if not labelled:
        raise DataError(f"{annotations}: no annotations")
    names = sorted(labelled)
    return [images / n for n in names], np.asarray([labelled[n] for n in names], dtype=np.int64)


def _source(
    split: str, listed: tuple[list[Path], np.ndarray], extra: list[Path], num_classes: int
) -> SplitSource:
    files, all_labels = listed

    def fill(images: np.ndarray, labels: np.ndarray) -> None:
        decode_images(files, images, TINYIMAGENET.image_size)
        labels[:] = all_labels

    size = TINYIMAGENET.image_size
    return SplitSource(
        split=split, files=[*files, *extra], shape=(3, size, size), num_classes=num_classes,
        count=lambda: len(files), fill=fill,
    )


def sources(root: str | os.PathLike[str] | None = None) -> tuple[Path, dict[str, SplitSource]]:
    """The dataset folder and its splits (``train``; ``val`` as the test split)."""
    folder = locate(TINYIMAGENET, root)
    wnids = read_wnids(folder)
    # wnids.txt decides the labels of both splits, so it is part of both cache keys.
    wnids_file = folder / "wnids.txt"
    return folder, {
        "train": _source("train", list_train(folder, wnids), [wnids_file], len(wnids)),
        "test": _source(
            "val",
            list_val(folder, wnids),
            [wnids_file, folder / "val" / "val_annotations.txt"],
            len(wnids),
        ),
    }


def load_tinyimagenet(root: str | os.PathLike[str] | None = None) -> DatasetSplits:
    """TinyImageNet-200 (100,000 training images, 10,000 labelled validation images as test).

    ``root`` is the directory that contains ``tiny-imagenet-200/`` (default: ``$FEDPRUNE_DATA``,
    else ``~/.cache/fedprune/data``). Decoded once into the cache.
    """
    folder, splits = sources(root)
    return cached_splits(TINYIMAGENET, folder, splits)
