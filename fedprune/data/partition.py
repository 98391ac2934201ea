"""Split a training set over clients: IID, and Dirichlet label skew with bounded resampling."""

from __future__ import annotations

import numpy as np

from fedprune.errors import FedpruneError


class IIDPartitioner:
    """A uniformly random permutation cut into ``num_clients`` near-equal parts."""

    def split(
        self, labels: np.ndarray, num_clients: int, generator: np.random.Generator
    ) -> list[np.ndarray]:
        _check_clients(len(labels), num_clients, 1)
        return [np.sort(p) for p in np.array_split(generator.permutation(len(labels)), num_clients)]


class DirichletPartitioner:
    """Per class, a Dirichlet(alpha) proportion vector over clients (label skew).

    Smaller ``alpha`` gives more skew. A draw where some client gets fewer than ``min_size``
    samples is redrawn, at most ``max_tries`` times; then a clear error says what to change
    (an unbounded loop here is a known bug in other frameworks).
    """

    def __init__(self, alpha: float = 0.5, min_size: int = 10, max_tries: int = 100) -> None:
        if alpha <= 0:
            raise FedpruneError(f"dirichlet alpha must be > 0, got {alpha}")
        self.alpha, self.min_size, self.max_tries = alpha, min_size, max_tries

    def split(
        self, labels: np.ndarray, num_clients: int, generator: np.random.Generator
    ) -> list[np.ndarray]:
        min_size = min(self.min_size, len(labels) // num_clients)
        _check_clients(len(labels), num_clients, max(min_size, 1))
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
            if min(len(c) for c in clients) >= max(min_size, 1):
                return clients
        raise FedpruneError(
            f"Dirichlet(alpha={self.alpha}) partition of {len(labels)} samples over "
            f"{num_clients} clients left a client with fewer than {max(min_size, 1)} samples in "
            f"{self.max_tries} draws; use fewer clients, a larger alpha, or a smaller min_size "
            "(-o dirichlet.min_size=N)"
        )


def _check_clients(num_samples: int, num_clients: int, per_client: int) -> None:
    if num_clients < 1 or num_clients * per_client > num_samples:
        raise FedpruneError(
            f"cannot split {num_samples} training samples over {num_clients} clients with at "
            f"least {per_client} each; use fewer clients"
        )
