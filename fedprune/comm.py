"""Messages that are honest about sparsity: their encoding, and their size.

A masked tensor travels as its values at the mask's positions, plus the positions themselves only
when the receiver does not already know the mask: as a packed bitmap or as int32 indices,
whichever is smaller (never more than the dense tensor: then it travels dense). The accounting
is `fedprune.formats`, shared with the memory report.

`encode_sparse` / `decode_sparse` and `encode_state` / `decode_state` produce and read the actual
arrays a message carries (used where messages really travel, e.g. on Flower); `state_bytes` gives
their size without building them (used by the in-process simulation). A test checks that the two
agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from fedprune.formats import format_bytes, storage_bytes
from fedprune.masks import top_mask
from fedprune.ops.bits import pack_bits, unpack_bits

__all__ = [
    "decode_sparse",
    "decode_state",
    "encode_sparse",
    "encode_state",
    "payload_bytes",
    "positions_bytes",
    "sparse_bytes",
    "state_bytes",
]


def positions_bytes(numel: int, nnz: int) -> int:
    """Bytes to say which ``nnz`` of ``numel`` positions are present: bitmap or int32 indices."""
    return min(format_bytes(f, numel, nnz, (numel,), value_bits=0) for f in ("bitmap", "coo"))


def sparse_bytes(numel: int, nnz: int, value_bytes: int = 4, positions: bool = True) -> int:
    """Bytes of a tensor with ``nnz`` present values, never more than sending it dense."""
    if not positions:
        return min(numel, nnz) * value_bytes
    return storage_bytes(numel, nnz, (numel,), value_bits=8 * value_bytes)[1]


def state_bytes(
    state: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None,
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


def payload_bytes(payload: Mapping[str, Tensor]) -> int:
    """Bytes of a message's arrays as they travel (values in their own dtype)."""
    return sum(t.numel() * t.element_size() for t in payload.values())


# ------------------------------------------------------------------------------------- encoding


def encode_top_inactive(
    scores: Mapping[str, Tensor], masks: Mapping[str, Tensor], counts: Mapping[str, int],
    names: Iterable[str],
) -> dict[str, Tensor]:
    """A top-k upload: per layer of ``names``, the ``counts`` largest scores among the positions
    ``masks`` leaves inactive (the growth candidates), as `encode_sparse` arrays."""
    out: dict[str, Tensor] = {}
    for name in names:
        top = top_mask(scores[name], ~masks[name], counts[name])
        out.update(encode_sparse(name, scores[name], top))
    return out


def encode_sparse(
    name: str, tensor: Tensor, where: Tensor, positions: bool = True
) -> dict[str, Tensor]:
    """The entries of ``tensor`` at ``where`` (bool) as message arrays named ``name/...``.

    With ``positions``: the cheapest of the dense tensor (``name``), a packed bitmap plus values
    (``name/bitmap``, ``name/values``) or int32 indices plus values (``name/index``,
    ``name/values``). Without: the values alone, in the receiver's mask order.
    """
    flat, keep = tensor.reshape(-1), where.reshape(-1)
    values = flat[keep]
    if not positions:
        return {f"{name}/values": values}
    fmt, _ = storage_bytes(flat.numel(), values.numel(), (flat.numel(),),
                           value_bits=8 * tensor.element_size())
    if fmt == "dense":
        return {name: torch.where(where, tensor, torch.zeros((), dtype=tensor.dtype))}
    if fmt == "bitmap":
        return {f"{name}/bitmap": pack_bits(keep), f"{name}/values": values}
    return {f"{name}/index": keep.nonzero().reshape(-1).to(torch.int32), f"{name}/values": values}


def decode_sparse(
    name: str, message: Mapping[str, Tensor], like: Tensor, where: Tensor | None = None
) -> Tensor:
    """The tensor `encode_sparse` encoded (zeros elsewhere), shaped and typed like ``like``;
    ``where`` is the receiver's mask when the message carries no positions."""
    if name in message:
        return message[name].reshape(like.shape).to(like.dtype)
    out = torch.zeros(like.numel(), dtype=like.dtype, device=like.device)
    values = message[f"{name}/values"].to(like.dtype)
    if f"{name}/bitmap" in message:
        out[unpack_bits(message[f"{name}/bitmap"], like.numel())] = values
    elif f"{name}/index" in message:
        out[message[f"{name}/index"].long()] = values
    else:
        assert where is not None, f"{name}: a message without positions needs the mask"
        out[where.reshape(-1)] = values
    return out.view(like.shape)


def encode_state(
    state: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None, positions: bool = True
) -> dict[str, Tensor]:
    """A model state as message arrays: masked tensors through `encode_sparse`, others whole."""
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        mask = masks.get(name) if masks else None
        if mask is None:
            out[name] = tensor
        else:
            out.update(encode_sparse(name, tensor, mask, positions))
    return out


def decode_state(
    message: Mapping[str, Tensor], like: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """The state `encode_state` encoded; ``like`` gives names, shapes and dtypes."""
    return {
        name: decode_sparse(name, message, tensor, masks.get(name) if masks else None)
        for name, tensor in like.items()
    }
