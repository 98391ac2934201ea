"""What fedprune knows about each real dataset: where it comes from and how it lies on disk.

One record per dataset keeps the download URL, the archive checksum (and where that checksum
comes from), the expected layout and the channel statistics in one place, so the loaders, the
downloader, `fedprune data info` and the error messages cannot disagree.

The data root is resolved the same way everywhere: an explicit ``root`` argument, else the
``FEDPRUNE_DATA`` environment variable, else ``~/.cache/fedprune/data``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedprune.errors import DataError

ROOT_ENV = "FEDPRUNE_DATA"
DEFAULT_ROOT = "~/.cache/fedprune/data"


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of one dataset in its official distribution format."""

    name: str
    title: str
    #: Directory under the data root that holds the extracted dataset.
    folder: str
    url: str
    #: File name of the downloaded archive (kept under the data root while downloading).
    archive: str
    md5: str
    #: True when the dataset's publisher lists this checksum; False when only third parties do.
    md5_published: bool
    md5_source: str
    #: Paths, relative to ``folder``, that must exist for the layout to count as complete.
    required: tuple[str, ...]
    #: The expected layout in one line, for error messages.
    layout: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: Padding of the random-crop training augmentation (flip is always on for training).
    augment_pad: int

    @property
    def url_env(self) -> str:
        """Environment variable that overrides the download URL (a mirror, or a test server)."""
        return f"FEDPRUNE_{self.name.upper()}_URL"

    def download_command(self, root: Path) -> str:
        return f"fedprune data download {self.name} --root {root}"


CIFAR10 = DatasetInfo(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    md5_published=True,
    md5_source="published by the dataset's authors on https://www.cs.toronto.edu/~kriz/cifar.html",
    required=(
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
        "batches.meta",
    ),
    layout="cifar-10-batches-py/{data_batch_1..data_batch_5, test_batch, batches.meta}",
    num_classes=10,
    image_size=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    augment_pad=4,
)

CINIC10 = DatasetInfo(
    name="cinic10",
    title="CINIC-10",
    folder="CINIC-10",
    url="https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz",
    archive="CINIC-10.tar.gz",
    md5="6ee4d0c996905fe93221de577967a372",
    md5_published=False,
    md5_source=(
        "not published by the dataset's authors (Edinburgh DataShare lists none); it is the value "
        "recorded independently by many third-party CINIC-10 loaders"
    ),
    required=("train", "valid", "test"),
    layout="CINIC-10/{train,valid,test}/<class>/*.png (10 class folders, 32x32 PNG)",
    num_classes=10,
    image_size=32,
    mean=(0.47889522, 0.47227842, 0.43047404),
    std=(0.24205776, 0.23828046, 0.25874835),
    augment_pad=4,
)

TINYIMAGENET = DatasetInfo(
    name="tinyimagenet",
    title="TinyImageNet-200",
    folder="tiny-imagenet-200",
    url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    archive="tiny-imagenet-200.zip",
    md5="90528d7ca1a48142e341f4ef8d21d0de",
    md5_published=False,
    md5_source=(
        "not published by cs231n; it is the value recorded independently by many third-party "
        "TinyImageNet loaders"
    ),
    required=("wnids.txt", "train", "val/images", "val/val_annotations.txt"),
    layout=(
        "tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/images/*.JPEG, "
        "val/images/*.JPEG, val/val_annotations.txt}"
    ),
    num_classes=200,
    image_size=64,
    mean=(0.4802, 0.4481, 0.3975),
    std=(0.2770, 0.2691, 0.2821),
    # 8 pixels on 64x64 images is the same 1/8 of the side as 4 pixels on 32x32 CIFAR images.
    augment_pad=8,
)

DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (CIFAR10, CINIC10, TINYIMAGENET)}


def get_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise DataError(f"unknown dataset {name!r}; the real datasets are: {known}") from None


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$FEDPRUNE_DATA``, else the default."""
    if root is None or str(root) == "":
        root = os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(root).expanduser()


def layout_problem(info: DatasetInfo, folder: Path) -> str | None:
    """The first required part of ``info``'s layout missing under ``folder``, or None."""
    if not folder.is_dir():
        return f"{info.folder} missing"
    for rel in info.required:
        if not (folder / rel).exists():
            return f"{info.folder}/{rel} missing"
    return None


def root_origin(root: str | os.PathLike[str] | None = None) -> str:
    """Where the data root came from, for messages: given, ``$FEDPRUNE_DATA`` or the default."""
    if root is not None and str(root) != "":
        return "as given"
    if os.environ.get(ROOT_ENV):
        return f"from ${ROOT_ENV}"
    return f"the default; set --root or ${ROOT_ENV} to change it"


def locate(info: DatasetInfo, root: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding ``info``'s dataset under the data root, checked for completeness.

    ``root`` is normally the directory that contains ``info.folder``; pointing it at the dataset
    folder itself is accepted too. Raises `DataError` saying where it looked, which part is
    missing, the expected layout and the command that downloads the dataset.
    """
    base = resolve_root(root)
    folder = base if base.name == info.folder else base / info.folder
    if folder is not base and not folder.is_dir() and layout_problem(info, base) is None:
        folder = base  # the root is the dataset folder itself, under another name
    problem = layout_problem(info, folder)
    if problem is None:
        return folder
    data_root = folder.parent
    hint = f"expected layout: {info.layout}; download it with: {info.download_command(data_root)}"
    if not folder.is_dir():
        raise DataError(
            f"{info.title} not found: looked for {folder} (data root {base}, "
            f"{root_origin(root)}); {hint}"
        )
    raise DataError(f"{info.title} at {folder} is incomplete: {problem}; {hint}")
