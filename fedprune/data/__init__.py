"""Datasets, partitions and the embedded default."""

from fedprune.data.base import ArrayDataset, DatasetSplits

__all__ = ["ArrayDataset", "DatasetSplits"]
