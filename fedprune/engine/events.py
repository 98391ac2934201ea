"""Objects handed to lifecycle hooks and to components during a run (read-only by contract)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedprune.engine.config import RunConfig


@dataclass(frozen=True)
class BenchInfo:
    """A bench: the methods and seeds it compares under one configuration."""

    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    config: RunConfig
    output_dir: str


@dataclass(frozen=True)
class RunInfo:
    """One (method, seed) run."""

    method: str
    seed: int
    config: RunConfig
    components: dict[str, Any] = field(default_factory=dict)

    @property
    def run_name(self) -> str:
        return f"{self.method}-seed{self.seed}"


@dataclass
class ClientContext:
    """What a component sees when a client starts local training.

    ``counts`` is the number of weights per layer to prune and regrow this round (empty when the
    round adjusts nothing); ``total_steps`` is the local step budget.
    """

    model: nn.Module
    params: dict[str, nn.Parameter]
    masks: dict[str, torch.Tensor] | None
    round: int
    client: int
    counts: dict[str, int]
    total_steps: int
    pruning_criterion: Any = None

    @property
    def adjusting(self) -> bool:
        return any(self.counts.values())


@dataclass(frozen=True)
class ClientReport:
    """A client's round, for observers."""

    client: int
    samples: int
    steps: int
    loss: float
    upload_bytes: int
    download_bytes: int
