"""What autograd keeps: the tensors graph nodes saved for backward, compared by storage.

A compressed copy of a tensor saves memory only if nothing else keeps the full tensor (the
pitfall in `fedprune.contracts.ActivationCompressor`); compressors use these to find out. Built-in
nodes expose their saved tensors as ``_saved_*`` attributes, custom Functions as
``saved_tensors``. Reading them runs any saved-tensor unpack hook: a hook that returns a copy makes
the tensor look unshared, so a compressor then compresses, the safe choice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["kept_by_producer", "saved_tensors", "savers", "source_of"]

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


# Producers that keep their *input* s, from which their output is f(s) exactly (clamp is exact):
# node class name -> f built from the node's saved scalars. In-place ReLU6 (torchvision's
# MobileNetV2) keeps a clone of its input; out-of-place it keeps the input itself.
_REBUILD: dict[str, Callable[[Any], Callable[[Tensor], Tensor]]] = {
    "HardtanhBackward0": lambda node: functools.partial(
        torch.clamp, min=node._saved_min_val, max=node._saved_max_val),
}


def _constant_factor(node: Any) -> float | None:
    """c where ``node`` computed ``input * c`` for a constant number c (e.g. NSConv's scaled
    activations); else None."""
    if type(node).__name__ != "MulBackward0" or node._saved_self is not None:
        return None
    other = node._saved_other
    return float(other) if isinstance(other, Tensor) and other.dim() == 0 else None


def source_of(x: Tensor) -> tuple[Any, Tensor, Callable[[Tensor], Tensor] | None] | None:
    """``(node, s, f)`` with ``x == f(s)`` bit for bit, where s is a tensor an autograd node
    behind ``x`` keeps for its own backward anyway; None when there is no such copy. Saving s
    instead of x costs no byte.

    s is x itself (f None) when the node that made x kept its output; else the node is
    reached through multiplications by constants and kept its output (ReLU) or an input its
    output is an exact function of (ReLU6). The rebuild assumes x was not changed in place,
    outside autograd, after it was made.
    """
    producer = kept_by_producer(x)
    if producer is not None:
        return producer, x, None
    if x._base is not None:
        return None
    node: Any = x.grad_fn
    factors: list[float] = []
    while node is not None and (factor := _constant_factor(node)) is not None:
        factors.append(factor)
        node = node.next_functions[0][0]
    name = type(node).__name__
    if name in _REBUILD:
        source, first = node._saved_self, _REBUILD[name](node)
    elif factors and hasattr(node, "_saved_result"):  # the node kept its output
        source, first = node._saved_result, _identity
    else:
        return None
    if not isinstance(source, Tensor) or source.shape != x.shape or source.dtype != x.dtype:
        return None
    return node, source.detach(), functools.partial(_rebuild, first, factors[::-1])


def _identity(x: Tensor) -> Tensor:
    return x


def _rebuild(first: Callable[[Tensor], Tensor], factors: list[float], s: Tensor) -> Tensor:
    """A new tensor (never s itself): the products are computed in place once x is new."""
    x = first(s)
    for factor in factors:
        x = x * factor if x is s else x.mul_(factor)
    return x


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
