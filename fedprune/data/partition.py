"""Split a training set over clients: IID, and Dirichlet label skew with bounded resampling."""

from __future__ import annotations

import math
import numbers

import numpy as np

from fedprune.contracts import Partitioner
from fedprune.errors import FedpruneError


class IIDPartitioner(Partitioner):
    """A uniformly random permutation cut into ``num_clients`` near-equal parts."""

    def split(
        self, labels: np.ndarray, num_clients: int, generator: np.random.Generator
    ) -> list[np.ndarray]:
        _check_clients(len(labels), num_clients)
        return [np.sort(p) for p in np.array_split(generator.permutation(len(labels)), num_clients)]


class DirichletPartitioner(Partitioner):
    """Per class, a Dirichlet(alpha) proportion vector over clients (label skew).

    Smaller ``alpha`` gives more skew. A draw where some client gets fewer than ``min_size``
    samples is redrawn, at most ``max_tries`` times; then a clear error says what to change
    (an unbounded loop here is a known bug in other frameworks).
    """

    def __init__(self, alpha: float = 0.5, min_size: int = 10, max_tries: int = 100) -> None:
        # bool is a number to Python, and NaN fails every comparison: both would slip through.
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (
            math.isfinite(alpha) and alpha > 0
        ):
            raise FedpruneError(f"dirichlet alpha must be a finite number > 0, got {alpha!r}")
        self.alpha: float = float(alpha)
        self.min_size: int = _check_int("dirichlet min_size", min_size, 0)
        self.max_tries: int = _check_int("dirichlet max_tries", max_tries, 1)

    def split(
        self, labels: np.ndarray, num_clients: int, generator: np.random.Generator
    ) -> list[np.ndarray]:
        min_size = _check_clients(len(labels), num_clients, self.min_size)
        by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        for _ in range(self.max_tries):
            parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for index in by_class:
                index = generator.permutation(index)
                share = generator.dirichlet(np.full(num_clients, self.alpha))
                cuts = (np.cumsum(share)[:-1] * len(index)).astype(int)
                for client, piece in enumerate(np.split(index, cuts)):
                    parts[client].append(piece)
            clients = [np.sort(np.concatenate(p)) for p in parts]
            if min(len(c) for c in clients) >= min_size:
                return clients
        raise FedpruneError(
            f"Dirichlet(alpha={self.alpha}) partition of {len(labels)} samples over "
            f"{num_clients} clients left a client with fewer than {min_size} samples in "
            f"{self.max_tries} draws; use fewer clients, a larger alpha, or a smaller min_size "
            "(-o dirichlet.min_size=N)"
        )


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise FedpruneError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_clients(num_samples: int, num_clients: int, min_size: int = 1) -> int:
    """The samples each client must get: ``min_size``, lowered to what the split allows, and at
    least 1. `FedpruneError` if ``num_clients`` is not an integer >= 1 or exceeds the samples."""
    _check_int("num_clients", num_clients, 1)
    per_client = max(min(min_size, num_samples // num_clients), 1)
    if num_clients * per_client > num_samples:
        raise FedpruneError(
            f"cannot split {num_samples} training samples over {num_clients} clients with at "
            f"least {per_client} each; use fewer clients"
        )
    return per_client
