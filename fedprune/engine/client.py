"""The client half of every method: local training of one client on the one shared model.

The same `nn.Module` serves every simulated client: load the global state, train, hand the
result to the server, which consumes it before the next client. Memory does not grow with the
number of clients. After training, the method's strategy finishes the client's round
(`Strategy.client_end`: prune and grow here, or upload growth scores).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from fedprune import masks as M
from fedprune.contracts import (
    ClientContext,
    GrowthCriterion,
    Payload,
    Regularizer,
    RoundPlan,
)
from fedprune.data.base import ArrayDataset
from fedprune.engine.config import RunConfig
from fedprune.engine.parts import MethodParts
from fedprune.engine.training import batches, data_batches, local_steps, seeded, sgd_steps
from fedprune.ops.layers import bind_masks
from fedprune.seeding import torch_generator


@dataclass
class ClientUpdate:
    """What a client sends back. ``state`` aliases the model's tensors: consume it at once."""

    client: int
    samples: int
    steps: int
    loss: float
    state: dict[str, Tensor]
    masks: dict[str, Tensor] | None = None  # the client's masks, when it changed them
    payload: Payload = field(default_factory=dict)  # e.g. growth scores
    metrics: dict[str, float] = field(default_factory=dict)  # the regularizer's, e.g. BaE's


class LocalTrainer:
    """Trains the shared model as client after client, for one method.

    ``client_states`` keeps, per client, what its growth criterion accumulates between the
    rounds it takes part in (`GrowthCriterion.client_state`): on a real device that state simply
    stays on the device.
    """

    def __init__(
        self,
        model: nn.Module,
        parts: MethodParts,
        config: RunConfig,
        data: ArrayDataset,
        client_indices: list[np.ndarray],
        seed: int,
    ) -> None:
        self.model, self.parts, self.config = model, parts, config
        self.data, self.client_indices, self.seed = data, client_indices, seed
        self.device = torch.device(config.device)
        self.params = dict(model.named_parameters())
        self.prunable = M.prunable_parameters(model, parts.settings.prune_classifier)
        self.regularizer = parts.one(Regularizer)
        self.growth = parts.one(GrowthCriterion)
        self.client_states: dict[int, Payload] = {}

    def _context(
        self, client: int, masks: dict[str, Tensor] | None, plan: RoundPlan, lr: float,
        steps: int, generator: torch.Generator,
    ) -> ClientContext:
        indices = self.client_indices[client]

        def gradient_batch() -> tuple[Tensor, Tensor]:
            index = next(batches(indices, self.config.batch_size, 1, generator))
            x, y = self.data.batch(index, train=True, generator=generator)
            return x.to(self.device), y.to(self.device)

        return ClientContext(
            model=self.model, params=self.params, prunable=self.prunable, masks=masks,
            plan=plan, client=client, samples=len(indices), total_steps=steps, lr=lr,
            lr0=self.config.lr, parts=self.parts, config=self.config,
            gradient_batch=gradient_batch,
            data=self.data, indices=indices,
        )

    def _load(self, global_state: dict[str, Tensor], masks: dict[str, Tensor] | None) -> None:
        self.model.load_state_dict(global_state)
        bind_masks(self.model, masks)

    def train(
        self,
        client: int,
        global_state: dict[str, Tensor],
        masks: dict[str, Tensor] | None,
        plan: RoundPlan,
        lr: float,
    ) -> ClientUpdate:
        """One client's round: local SGD at ``lr``, then the strategy's client half."""
        config, model = self.config, self.model
        self._load(global_state, masks)
        model.train()
        indices = self.client_indices[client]
        steps = local_steps(len(indices), config)
        generator = torch_generator(self.seed, "client-data", plan.round, client)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        ctx = self._context(client, masks, plan, lr, steps, generator)
        ctx.optimizer = optimizer
        reg, growth = self.regularizer, self.growth
        if reg is not None:
            reg.begin(ctx)
        if growth is not None:
            growth.load_client_state(self.client_states.pop(client, {}))
            growth.begin(self.params)
        step_lr = None
        if reg is not None:
            def step_lr(step: int) -> float:
                return reg.learning_rate(step, steps, lr, config.lr)
        loss, _ = sgd_steps(
            model, self.params,
            data_batches(self.data, indices, config.batch_size, steps, generator, self.device),
            optimizer, masks=masks, regularizer=reg, growth=growth, step_lr=step_lr,
        )
        metrics = reg.end(ctx) if reg is not None else {}
        result = self.parts.strategy.client_end(ctx)
        if growth is not None:
            kept = growth.client_state()
            if kept:
                self.client_states[client] = kept
        return ClientUpdate(
            client, len(indices), steps, loss, model.state_dict(), result.masks,
            result.payload, metrics,
        )

    def task(
        self,
        name: str,
        client: int,
        global_state: dict[str, Tensor],
        masks: dict[str, Tensor] | None,
        payload: Payload,
        round: int = 0,
    ) -> Payload:
        """A non-training task of the strategy (`Strategy.client_task`) on ``client``'s data."""
        self._load(global_state, masks)
        generator = torch_generator(self.seed, "client-task", name, round, client)
        ctx = self._context(client, masks, RoundPlan(round), self.config.lr,
                            local_steps(len(self.client_indices[client]), self.config), generator)
        return self.parts.strategy.client_task(name, ctx, payload)


class ClientExecutor(Protocol):
    """Where clients run: in this process one after another (`InProcessClients`), or on remote
    workers (the Flower engine). Results come back in client order, one at a time, so the
    server folds them as they arrive and the result does not depend on arrival order."""

    def train(
        self, round: int, clients: list[int], state: dict[str, Tensor],
        masks: dict[str, Tensor] | None, plan: RoundPlan, lr: float,
    ) -> Iterator[ClientUpdate]: ...

    def task(
        self, name: str, clients: list[int], state: dict[str, Tensor],
        masks: dict[str, Tensor] | None, payload: Payload,
    ) -> Iterator[tuple[int, int, Payload]]: ...


class InProcessClients:
    """Every client trained on the one shared model of this process, in client order, each in
    its own seeded scope of torch's global generator."""

    def __init__(self, trainer: LocalTrainer) -> None:
        self.trainer = trainer

    def _scope(self, *keys: object) -> contextlib.AbstractContextManager:
        return seeded(self.trainer.seed, *keys, device=self.trainer.device)

    def train(self, round, clients, state, masks, plan, lr) -> Iterator[ClientUpdate]:
        for client in sorted(clients):
            with self._scope("client", round, client):
                update = self.trainer.train(client, state, masks, plan, lr)
            yield update

    def task(self, name, clients, state, masks, payload) -> Iterator[tuple[int, int, Payload]]:
        for client in sorted(clients):
            with self._scope("task", name, client):
                reply = self.trainer.task(name, client, state, masks, payload)
            yield client, len(self.trainer.client_indices[client]), reply
