"""Datasets, partitions and the embedded default.

The package itself imports nothing heavy: `fedprune data` (downloads, the cache, the catalog)
answers without torch; ``ArrayDataset`` and ``DatasetSplits`` load `fedprune.data.base` (and torch)
on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedprune.data.base import ArrayDataset, DatasetSplits

__all__ = ["ArrayDataset", "DatasetSplits"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("fedprune.data.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
