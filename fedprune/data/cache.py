"""Decode once: every split is decoded a single time into a uint8 NCHW ``.npy`` file.

Training then reads a read-only memory map of that file, so PNG/JPEG/pickle decoding never
happens again, and every client (and every worker process) shares one copy of the images
through the operating system's page cache.

The cache lives in ``<data root>/.fedprune-cache/`` (or ``$FEDPRUNE_CACHE``). A split's files
are named ``<dataset>-<split>-<key>.images.npy`` and ``.labels.npy``; the key hashes the
relative paths, sizes and modification times of the source files, so editing, adding or removing
a source file changes the key and the split is decoded again (the outdated files are removed).
Files are written under temporary names and renamed into place, so an interrupted decode never
leaves a cache that looks valid; a cache damaged anyway (truncated, emptied, labels out of range)
is detected when it is loaded, named in a warning and decoded again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fedprune.errors import DataError

if TYPE_CHECKING:
    from fedprune.data.base import DatasetSplits

log = logging.getLogger(__name__)

CACHE_ENV = "FEDPRUNE_CACHE"
CACHE_DIRNAME = ".fedprune-cache"
#: Part of every key: bump it when decoding changes, so old caches are not reused.
FORMAT_VERSION = 1

Fill = Callable[[np.ndarray, np.ndarray], None]


@dataclass
class SplitSource:
    """How to build one split: its source files, its size and a function that decodes it.

    ``fill(images, labels)`` writes all images into ``images`` (an (N, C, H, W) uint8 memory map)
    and the labels, each in ``0 .. num_classes - 1``, into ``labels`` (int64, length N).
    ``count`` is a function so that datasets whose size is only known after reading (CIFAR-10's
    pickles) pay for it only when decoding.
    """

    split: str
    files: Sequence[Path]
    shape: tuple[int, int, int]
    num_classes: int
    count: Callable[[], int]
    fill: Fill


class CorruptCache(DataError):
    """A decode-cache file is there but unusable; `DecodeCache.get` decodes the split again."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"the decode cache {path} is unusable ({problem})")
        self.path, self.problem = path, problem


def cache_dir(data_root: Path) -> Path:
    """``$FEDPRUNE_CACHE`` if set, else ``<data_root>/.fedprune-cache``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path(data_root) / CACHE_DIRNAME


def source_key(base: Path, files: Iterable[Path], salt: str = "") -> str:
    """A hash of the files' paths relative to ``base``, sizes and modification times, in order.

    Stat-only on purpose: hashing file contents would cost as much as decoding them. The order
    counts, because it is the order of the images in the cache.
    """
    h = hashlib.sha256(f"fedprune-cache v{FORMAT_VERSION}\n{salt}\n".encode())
    prefix = os.path.join(os.fspath(base), "")
    for path in files:
        name = os.fspath(path)
        try:
            st = os.stat(name)
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror}") from None
        rel = name[len(prefix):] if name.startswith(prefix) else name  # str ops: 10x pathlib's
        h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


class DecodeCache:
    """The decoded splits of one dataset in one cache directory."""

    def __init__(self, directory: Path, dataset: str) -> None:
        self.directory = Path(directory)
        self.dataset = dataset

    def key(self, base: Path, source: SplitSource) -> str:
        return source_key(base, source.files, f"{self.dataset}/{source.split}/{source.shape}")

    def paths(self, split: str, key: str) -> tuple[Path, Path]:
        stem = self.directory / f"{self.dataset}-{split}-{key}"
        return stem.with_name(stem.name + ".images.npy"), stem.with_name(stem.name + ".labels.npy")

    def _others(self, split: str, key: str) -> list[Path]:
        if not self.directory.is_dir():
            return []
        keep = set(self.paths(split, key))
        prefix = f"{self.dataset}-{split}-"
        return [
            p
            for p in self.directory.iterdir()
            if p.name.startswith(prefix) and p.name.endswith(".npy") and p not in keep
        ]

    def state(self, split: str, key: str) -> str:
        """``fresh`` (built from the current source), ``stale`` (from an older one) or ``none``."""
        if all(p.is_file() for p in self.paths(split, key)):
            return "fresh"
        return "stale" if self._others(split, key) else "none"

    def nbytes(self, split: str, key: str) -> int:
        return sum(p.stat().st_size for p in self.paths(split, key) if p.is_file())

    def load(self, source: SplitSource, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached split as (read-only memory map, labels), or None if it is not built.

        A cache that is there but unusable raises `CorruptCache` naming the file: unreadable,
        truncated or empty, images of another type or shape, a count that differs from the
        labels', or a label outside ``0 .. num_classes - 1`` (which training would only report
        as an out-of-bounds target, far from its cause).
        """
        images_path, labels_path = self.paths(source.split, key)
        if not (images_path.is_file() and labels_path.is_file()):
            return None
        images, labels = _load_npy(images_path, mmap=True), _load_npy(labels_path, mmap=False)
        if images.dtype != np.uint8 or images.shape[1:] != source.shape:
            expected = f"uint8 (N, {', '.join(map(str, source.shape))})"
            raise CorruptCache(images_path, f"{images.dtype} {images.shape}, expected {expected}")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise CorruptCache(labels_path, f"{labels.dtype} {labels.shape}, expected int (N,)")
        if len(labels) != len(images):
            raise CorruptCache(labels_path, f"{len(labels)} labels for {len(images)} images")
        if len(labels) and (labels.min() < 0 or labels.max() >= source.num_classes):
            raise CorruptCache(labels_path, f"labels outside 0..{source.num_classes - 1}")
        return images, labels

    def get(self, base: Path, source: SplitSource) -> tuple[np.ndarray, np.ndarray]:
        """The split from the cache, decoding it first if the cache is missing, outdated or
        unusable (with a warning naming the unusable file).

        Processes that load the same split at once (parallel workers) decode it only once: the
        first takes a lock file, the others wait for it and then read its cache.
        """
        key = self.key(base, source)
        try:
            cached = self.load(source, key)
        except CorruptCache as exc:
            warnings.warn(f"{exc}; decoding the split again", stacklevel=2)
            cached = None
        if cached is not None:
            return cached
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with _locked(self.directory / f"{self.dataset}-{source.split}.lock"):
                with contextlib.suppress(CorruptCache):  # built by another process meanwhile?
                    if (cached := self.load(source, key)) is not None:
                        return cached
                return self.build(source, key)
        except OSError as exc:
            origin = f"from ${CACHE_ENV}" if os.environ.get(CACHE_ENV) else "the default"
            raise DataError(
                f"cannot write the decode cache directory {self.directory} ({origin}): "
                f"{exc.strerror}; set ${CACHE_ENV} to a writable directory with free space"
            ) from None

    def build(self, source: SplitSource, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Decode ``source`` into the cache under ``key`` (the directory must exist)."""
        self._remove_abandoned(source.split)
        n = source.count()
        images_path, labels_path = self.paths(source.split, key)
        tag = f".{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        tmp_images = images_path.with_name(images_path.name + tag)
        tmp_labels = labels_path.with_name(labels_path.name + tag)
        log.info("decoding %d images of %s/%s into %s", n, self.dataset, source.split, images_path)
        started = time.perf_counter()
        try:
            images = np.lib.format.open_memmap(
                tmp_images, mode="w+", dtype=np.uint8, shape=(n, *source.shape)
            )
            labels = np.zeros(n, dtype=np.int64)
            source.fill(images, labels)
            images.flush()
            del images
            with open(tmp_labels, "wb") as f:
                np.save(f, labels)
                f.flush()
                os.fsync(f.fileno())
            with open(tmp_images, "rb+") as f:
                os.fsync(f.fileno())
            # Labels first: the images file appearing is what makes the pair visible.
            os.replace(tmp_labels, labels_path)
            os.replace(tmp_images, images_path)
        except BaseException:
            for tmp in (tmp_images, tmp_labels):
                tmp.unlink(missing_ok=True)
            raise
        for old in self._others(source.split, key):
            with contextlib.suppress(OSError):  # still mapped by another process on Windows
                old.unlink()
        elapsed = time.perf_counter() - started
        log.info("decoded %s/%s in %.1f s", self.dataset, source.split, elapsed)
        loaded = self.load(source, key)
        if loaded is None:  # pragma: no cover - only if the file system lost the files
            raise DataError(f"the decode cache {images_path} could not be read back")
        return loaded

    def _remove_abandoned(self, split: str) -> None:
        """Temporary files of decodes whose process died (killed mid-decode)."""
        prefix = f"{self.dataset}-{split}-"
        for path in self.directory.glob(prefix + "*.tmp"):
            pid = path.name.rsplit(".", 2)[-2].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                path.unlink(missing_ok=True)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":  # np.load would try it as a pickle, and refuse that
                raise CorruptCache(path, "not a .npy file" if f.tell() else "empty file")
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as exc:
        raise CorruptCache(path, f"truncated or unreadable: {exc}") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX); elsewhere no lock, which only costs a
    duplicate decode, never a corrupt cache, since every write is a rename."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but not ours, or the platform cannot tell: leave it alone
    return True


def list_files(directory: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files in ``directory`` whose suffix (any case) is in ``suffixes``, sorted by name."""
    try:
        with os.scandir(directory) as entries:
            names = sorted(e.name for e in entries if e.name.lower().endswith(suffixes))
    except OSError as exc:
        raise DataError(f"cannot list {directory}: {exc.strerror}") from None
    return [directory / name for name in names]


def decode_image(path: Path, size: int) -> np.ndarray:
    """One image file as a (3, size, size) uint8 array; grey-scale and palette images become RGB.

    A file that cannot be read or decoded, or has the wrong size, raises `DataError` naming it;
    so does one Pillow refuses as a decompression bomb (a header claiming a huge image).
    """
    try:
        with Image.open(path) as im:
            if im.size != (size, size):
                raise DataError(
                    f"{path}: expected a {size}x{size} image, got {im.size[0]}x{im.size[1]}"
                )
            rgb = im.convert("RGB")
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        reason = f"expected a {size}x{size} image, got a far larger one ({exc})"
        raise DataError(f"{path}: {reason}") from None
    except OSError as exc:
        if exc.errno is not None:  # the file system, not the image data
            raise DataError(f"{path}: cannot read ({exc.strerror})") from None
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from None
    except (SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def decode_images(paths: Sequence[Path], out: np.ndarray, size: int) -> None:
    """Decode ``paths`` into ``out[i]`` in order.

    One thread: decoding happens once per dataset, and on small images Python's per-image
    overhead, not the codec, dominates, so threads did not make it faster (docs/datasets.md).
    Pillow only warns about a header claiming a large image; here that is an error naming it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for i, path in enumerate(paths):
            out[i] = decode_image(path, size)


def cached_splits(info, folder: Path, splits: dict[str, SplitSource]) -> DatasetSplits:
    """Train and test splits of ``folder``, decoded once into the cache, as array datasets.

    Training images get the dataset's standard augmentation (random crop with
    ``info.augment_pad`` padding, horizontal flip); both splits use its channel statistics.
    """
    from fedprune.data.base import ArrayDataset, DatasetSplits  # torch: not for `fedprune data`

    cache = DecodeCache(cache_dir(folder.parent), info.name)
    x_train, y_train = cache.get(folder, splits["train"])
    x_test, y_test = cache.get(folder, splits["test"])
    return DatasetSplits(
        train=ArrayDataset(x_train, y_train, info.mean, info.std, augment_pad=info.augment_pad,
                           flip=True),
        test=ArrayDataset(x_test, y_test, info.mean, info.std),
        num_classes=splits["train"].num_classes,
        name=info.name,
    )
