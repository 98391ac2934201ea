"""Communication accounting that is honest about sparsity.

A masked tensor travels as its non-zero values plus the cheaper of a bitmap and int32 indices
for their positions; positions are only sent when the receiver does not already know the mask.
Dense tensors travel as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

INDEX_BYTES = 4


def positions_bytes(numel: int, nnz: int) -> int:
    """Bytes to say which ``nnz`` of ``numel`` positions are present: bitmap or int32 indices."""
    return min(math.ceil(numel / 8), nnz * INDEX_BYTES)


def sparse_bytes(numel: int, nnz: int, value_bytes: int = 4, positions: bool = True) -> int:
    """Bytes of a tensor with ``nnz`` present values, never more than sending it dense."""
    dense = numel * value_bytes
    if not positions:
        return min(dense, nnz * value_bytes)
    return min(dense, nnz * value_bytes + positions_bytes(numel, nnz))


def state_bytes(
    state: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None,
    positions: bool = True,
) -> int:
    """Bytes of a model state: masked tensors sparse (with or without positions), others dense."""
    total = 0
    for name, tensor in state.items():
        mask = masks.get(name) if masks else None
        if mask is None:
            total += tensor.numel() * tensor.element_size()
        else:
            total += sparse_bytes(tensor.numel(), int(mask.sum()), tensor.element_size(), positions)
    return total
