"""Bool tensors packed eight entries per byte: the storage of 1-bit activations and SAP masks."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pack_bits", "unpack_bits"]


def pack_bits(mask: Tensor) -> Tensor:
    """A bool tensor as a flat uint8 tensor of m = ceil(numel / 8) bytes.

    Planar layout: bit i of byte j is entry ``i * m + j`` of the flattened mask, so packing and
    unpacking work on eight contiguous slices (vectorised) rather than on every eighth byte.
    """
    flat = mask.reshape(-1).view(torch.uint8)
    pad = -flat.numel() % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    planes = flat.view(8, -1)
    packed = planes[0].clone()
    for i in range(1, 8):
        packed |= planes[i] << i
    return packed


def unpack_bits(packed: Tensor, numel: int) -> Tensor:
    """Inverse of `pack_bits`: a flat bool tensor of ``numel`` entries."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device).unsqueeze(1)
    bits = (packed.unsqueeze(0) >> shifts) & 1
    return bits.view(-1)[:numel].view(torch.bool)
