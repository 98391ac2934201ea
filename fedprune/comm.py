"""Communication accounting that is honest about sparsity.

A masked tensor travels in the cheapest storage format for its density (dense, a bitmap plus
values, or values plus int32 indices: `fedprune.memory.storage_bytes`, the same accounting as the
memory report); its positions are only sent when the receiver does not already know the mask.
Dense tensors travel as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedprune.memory import format_bytes, storage_bytes


def positions_bytes(numel: int, nnz: int) -> int:
    """Bytes to say which ``nnz`` of ``numel`` positions are present: bitmap or int32 indices."""
    return min(format_bytes(f, numel, nnz, (numel,), value_bits=0) for f in ("bitmap", "coo"))


def sparse_bytes(numel: int, nnz: int, value_bytes: int = 4, positions: bool = True) -> int:
    """Bytes of a tensor with ``nnz`` present values, never more than sending it dense."""
    if not positions:
        return min(numel, nnz) * value_bytes
    return storage_bytes(numel, nnz, (numel,), value_bits=8 * value_bytes)[1]


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
