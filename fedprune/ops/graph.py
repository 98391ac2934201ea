"""What autograd keeps: the tensors graph nodes saved for backward, compared by storage.

A compressed copy of a tensor saves memory only if nothing else keeps the full tensor (the
pitfall in `fedprune.contracts.ActivationCompressor`); compressors use these to find out. Built-in
nodes expose their saved tensors as ``_saved_*`` attributes, custom Functions as
``saved_tensors``. Reading them runs any saved-tensor unpack hook: a hook that returns a copy makes
the tensor look unshared, so a compressor then compresses, the safe choice.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

__all__ = ["kept_by_producer", "saved_tensors", "savers"]

_NAMES: dict[type, tuple[str, ...]] = {}


def saved_tensors(node: Any) -> list[Tensor]:
    """The tensors an autograd node saved for its backward (empty once they are freed)."""
    names = _NAMES.get(type(node))
    if names is None:
        names = _NAMES[type(node)] = tuple(
            n for n in dir(node) if n.startswith("_saved_") and n != "_saved_tensors")
    try:
        values = ([getattr(node, n) for n in names] if names
                  else list(getattr(node, "saved_tensors", ())))
    except RuntimeError:  # freed after backward
        return []
    flat = [t for v in values for t in (v if isinstance(v, (tuple, list)) else (v,))]
    return [t for t in flat if isinstance(t, Tensor)]


def _address(t: Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage
        return None


def kept_by_producer(x: Tensor) -> Any | None:
    """The autograd node that made ``x`` (or the tensor x views) if it saved a tensor on x's
    storage for its own backward, so that x is kept in full anyway; else None."""
    address = _address(x)
    if address is None:
        return None
    for t in (x, x._base):
        node = None if t is None else t.grad_fn
        if node is not None and any(_address(s) == address for s in saved_tensors(node)):
            return node
    return None


def savers(outputs: Iterable[Tensor], skip: Iterable[Any] = ()) -> dict[int, set[str]]:
    """Storage address -> names of the nodes of the graph behind ``outputs`` (those in ``skip``
    excluded) that saved a tensor on that storage. Addresses compare only among live tensors:
    keep alive whatever is looked up."""
    excluded = set(skip)
    found: dict[int, set[str]] = {}
    seen: set[Any] = set()
    stack = [t.grad_fn for t in outputs]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node not in excluded:
            for t in saved_tensors(node):
                address = _address(t)
                if address is not None:
                    found.setdefault(address, set()).add(type(node).__name__)
        stack.extend(f for f, _ in node.next_functions)
    return found
