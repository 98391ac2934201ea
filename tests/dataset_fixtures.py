"""Tiny datasets in the exact official on-disk formats, for tests that cannot download anything.

Each generator writes real files (pickled CIFAR batches, PNG and JPEG images written by Pillow)
with the official names and structure, only with a few images, and returns what it wrote so
tests can compare decoded pixels and labels with the truth.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]


@dataclass
class Fixture:
    """A generated dataset: its data root, its folder, and per split the expected arrays."""

    root: Path
    folder: Path
    images: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)


def _random_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, 3, size, size) uint8 images: smooth colour gradients plus noise, so JPEG stays close."""
    ramp = np.linspace(0, 1, size)
    base = rng.uniform(30, 220, size=(n, 3, 1, 1))
    slope = rng.uniform(-30, 30, size=(n, 3, 1, 1))
    img = base + slope * (ramp[None, None, :, None] + ramp[None, None, None, :])
    img += rng.normal(0, 3, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(array_chw: np.ndarray, path: Path, fmt: str, gray: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    hwc = array_chw.transpose(1, 2, 0)
    image = Image.fromarray(hwc[:, :, 0], mode="L") if gray else Image.fromarray(hwc, mode="RGB")
    if fmt == "JPEG":
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path, format=fmt)


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], name: str) -> None:
    """A batch pickled as in the official files: protocol 2, a dict with bytes keys, data
    (N, 3072) uint8 rebuilt by ``numpy.core.multiarray._reconstruct`` (the module name numpy 1.x
    wrote, which numpy 2 renamed)."""
    batch = {
        b"batch_label": name.encode(),
        b"labels": list(labels),
        b"data": data.reshape(len(data), -1),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(data))],
    }
    raw = pickle.dumps(batch, protocol=2)
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


def make_cifar10(root: Path, per_batch: int = 6, test: int = 10, seed: int = 0) -> Fixture:
    """``root/cifar-10-batches-py/`` with data_batch_1..5 (``per_batch`` images each),
    test_batch and batches.meta."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    fx = Fixture(root, folder)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = _random_images(rng, per_batch, 32)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        write_cifar_batch(folder / f"data_batch_{i}", x, y, f"training batch {i} of 5")
        train_x.append(x)
        train_y += y
    x = _random_images(rng, test, 32)
    y = [int(v) for v in rng.integers(0, 10, test)]
    write_cifar_batch(folder / "test_batch", x, y, "testing batch 1 of 1")
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [c.encode() for c in CIFAR_CLASSES],
        b"num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    fx.images = {"train": np.concatenate(train_x), "test": x}
    fx.labels = {"train": np.asarray(train_y), "test": np.asarray(y)}
    fx.files = {
        "train": [folder / f"data_batch_{i}" for i in range(1, 6)],
        "test": [folder / "test_batch"],
    }
    return fx


def make_cinic10(root: Path, per_class: int = 2, seed: int = 0, gray: int = 1) -> Fixture:
    """``root/CINIC-10/{train,valid,test}/<class>/*.png`` with ``per_class`` 32x32 PNGs per class,
    named like the official files (``cifar10-train-<n>.png``, ``n<synset>_<n>.png``). The first
    ``gray`` images of the ``bird`` class of each split are grey-scale PNGs, as some are in
    CINIC-10."""
    rng = np.random.default_rng(seed)
    folder = root / "CINIC-10"
    fx = Fixture(root, folder)
    for split in ("train", "valid", "test"):
        xs, ys, files = [], [], []
        for label, name in enumerate(CIFAR_CLASSES):
            x = _random_images(rng, per_class, 32)
            for j in range(per_class):
                is_gray = name == "bird" and j < gray
                if is_gray:
                    x[j] = x[j][:1]  # every channel equal to the first: what RGB conversion yields
                stem = f"cifar10-{split}-{label * 100 + j}" if j % 2 else f"n0{label}52{j:04d}_{j}"
                path = folder / split / name / f"{stem}.png"
                _save(x[j], path, "PNG", gray=is_gray)
                files.append(path)
            # The loader orders files by name within a class; do the same for the truth.
            order = sorted(range(per_class), key=lambda j: files[-per_class + j].name)
            files[-per_class:] = [files[-per_class + j] for j in order]
            xs.append(x[order])
            ys += [label] * per_class
        fx.images[split] = np.concatenate(xs)
        fx.labels[split] = np.asarray(ys)
        fx.files[split] = files
    return fx


def make_tinyimagenet(
    root: Path,
    classes: int = 3,
    train_per_class: int = 3,
    val_per_class: int = 2,
    test: int = 2,
    seed: int = 0,
) -> Fixture:
    """``root/tiny-imagenet-200/`` with wnids.txt, words.txt, train/<wnid>/images/*.JPEG (and the
    per-class boxes file), val/images with val_annotations.txt, and test/images. The first
    training image of the first class is a grey-scale JPEG, as some TinyImageNet images are.
    Expected pixels are read back from the written JPEGs (JPEG is lossy)."""
    rng = np.random.default_rng(seed)
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True, exist_ok=True)
    wnids = [f"n0{1443537 + 1000 * i}" for i in range(classes)]
    # wnids.txt is not sorted in the official file either.
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))
    (folder / "words.txt").write_text(
        "".join(f"{w}\tclass number {i}, thing {i}\n" for i, w in enumerate(wnids))
        + "n00001740\tentity\n"
    )
    fx = Fixture(root, folder)
    ys, files = [], []
    for label, wnid in enumerate(wnids):
        x = _random_images(rng, train_per_class, 64)
        boxes = []
        for j in range(train_per_class):
            path = folder / "train" / wnid / "images" / f"{wnid}_{j}.JPEG"
            _save(x[j], path, "JPEG", gray=(label == 0 and j == 0))
            files.append(path)
            boxes.append(f"{wnid}_{j}.JPEG\t0\t0\t63\t63\n")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
        ys += [label] * train_per_class
    fx.files["train"] = files
    fx.labels["train"] = np.asarray(ys)
    fx.images["train"] = np.stack([_read(p) for p in files])

    val = []
    for label, wnid in enumerate(wnids):
        for _ in range(val_per_class):
            val.append((f"val_{len(val)}.JPEG", wnid, label))
    lines = []
    x = _random_images(rng, len(val), 64)
    for (name, wnid, _), img in zip(val, x, strict=True):
        _save(img, folder / "val" / "images" / name, "JPEG")
        lines.append(f"{name}\t{wnid}\t{rng.integers(0, 20)}\t{rng.integers(0, 20)}\t50\t60\n")
    order = rng.permutation(len(lines))  # the official file is not sorted by name either
    (folder / "val" / "val_annotations.txt").write_text("".join(lines[i] for i in order))
    val.sort(key=lambda v: v[0])
    fx.files["test"] = [folder / "val" / "images" / name for name, _, _ in val]
    fx.labels["test"] = np.asarray([label for _, _, label in val])
    fx.images["test"] = np.stack([_read(p) for p in fx.files["test"]])
    for i, img in enumerate(_random_images(rng, test, 64)):
        _save(img, folder / "test" / "images" / f"test_{i}.JPEG", "JPEG")
    return fx


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1)


def make_archive(folder: Path, archive: Path, top: str | None = None) -> bytes:
    """Pack ``folder`` as the official archive would be (.tar.gz or .zip by suffix) and return
    its bytes. ``top`` is the name of the top-level folder in the archive; None packs the
    folder's contents at the top level (as CINIC-10.tar.gz does)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    paths = sorted(folder.rglob("*"))
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in paths:
                rel = p.relative_to(folder).as_posix()
                zf.write(p, f"{top}/{rel}" if top else rel)
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for p in paths:
                rel = p.relative_to(folder).as_posix()
                tf.add(p, f"{top}/{rel}" if top else f"./{rel}", recursive=False)
    return archive.read_bytes()


def tar_with_member(archive: Path, name: str, data: bytes = b"x") -> bytes:
    """A .tar.gz holding one file named ``name`` (for path-traversal tests)."""
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return archive.read_bytes()


def claim_size(path: Path, width: int, height: int) -> None:
    """Rewrite the header of the PNG or JPEG at ``path`` to claim ``width`` x ``height`` pixels,
    as a decompression bomb does, without writing the pixels (Pillow reads only the header)."""
    data = bytearray(path.read_bytes())
    if data.startswith(b"\x89PNG"):
        struct.pack_into(">II", data, 16, width, height)  # IHDR data, then its CRC
        struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    else:
        markers = (b"\xff\xc0", b"\xff\xc2")  # start of frame: baseline, progressive
        sof = min(i for i in (data.find(m) for m in markers) if i >= 0)
        struct.pack_into(">HH", data, sof + 5, height, width)
    path.write_bytes(bytes(data))


def deny_writes(directory: Path, monkeypatch) -> None:
    """Make ``directory`` read-only. Root ignores permissions, so for root the decode cache's
    ``open`` refuses writes there instead (its lock file is the first write a decode makes)."""
    directory.chmod(0o555)
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return
    from fedprune.data import cache

    def guarded(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and Path(file).parent == directory:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(cache, "open", guarded, raising=False)
