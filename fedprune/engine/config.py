"""A run's configuration: everything that, with the method and seed, determines its result."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedprune.errors import FedpruneError


@dataclass(frozen=True)
class RunConfig:
    """Settings shared by every method in a bench; defaults suit the embedded digits dataset.

    ``options`` holds component options as ``{"component.option": value}`` (``-o`` on the
    command line); a key without a dot is a method setting (see `MethodSettings`).
    """

    dataset: str = "digits"
    model: str = "cnn"
    data_root: str | None = None
    rounds: int = 40
    clients: int = 10
    clients_per_round: int = 5
    local_epochs: int = 1
    local_steps: int | None = None
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    density: float = 0.2
    partition: str = "dirichlet"
    dirichlet_alpha: float = 0.5
    eval_every: int = 5
    eval_batch_size: int = 512
    device: str = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positive = ("rounds", "clients", "clients_per_round", "local_epochs", "batch_size",
                    "eval_every", "eval_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise FedpruneError(f"{name.replace('_', '-')} must be at least 1")
        if self.local_steps is not None and self.local_steps < 1:
            raise FedpruneError("local-steps must be at least 1")
        if self.clients_per_round > self.clients:
            raise FedpruneError(
                f"clients-per-round ({self.clients_per_round}) cannot exceed clients "
                f"({self.clients}): clients are sampled without replacement"
            )
        if not 0 < self.density <= 1:
            raise FedpruneError(f"density must be in (0, 1], got {self.density}")
        if self.lr <= 0:
            raise FedpruneError(f"lr must be positive, got {self.lr}")

    def as_params(self) -> dict[str, Any]:
        """Flat parameters for tracking and results.json."""
        fields = (f.name for f in dataclasses.fields(self) if f.name != "options")
        out = {name: getattr(self, name) for name in fields}
        out.update({f"option.{k}": v for k, v in sorted(self.options.items())})
        return out

    def component_options(self, component: str) -> dict[str, Any]:
        """Options addressed to ``component`` (keys ``component.option``)."""
        prefix = component + "."
        return {k[len(prefix):]: v for k, v in self.options.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class MethodSettings:
    """A method's own settings: how its masks are made and aggregated.

    distribution: layer-wise densities, ``erk`` or ``uniform``.
    init: initial mask, ``random`` positions or ``magnitude`` of the initial weights.
    min_votes: a position survives server aggregation when the sample-weighted share of clients
      holding it exceeds this (0: the union of client masks).
    prune_classifier: prune the last linear layer too.
    """

    distribution: str = "erk"
    init: str = "random"
    min_votes: float = 0.0
    prune_classifier: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MethodSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise FedpruneError(
                f"unknown method setting {', '.join(unknown)}; settings are "
                f"{', '.join(sorted(names))}, component options are written component.option"
            )
        settings = cls(**options)
        if settings.distribution not in ("erk", "uniform"):
            raise FedpruneError(
                f"distribution must be erk or uniform, not {settings.distribution!r}"
            )
        if settings.init not in ("random", "magnitude"):
            raise FedpruneError(f"init must be random or magnitude, not {settings.init!r}")
        if not 0 <= settings.min_votes < 1:
            raise FedpruneError(f"min_votes must be in [0, 1), got {settings.min_votes}")
        return settings
