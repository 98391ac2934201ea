"""The one pipeline from names to a ready run, used by the bench, ``fedprune memory``, the
benchmarks and the tests.

Per seed, `make_federation` builds what every method shares: the client split of the training set
and the base model, initialised from the seed alone. Per method, `prepare` builds the parts, a
deep copy of the base model with the method's transforms and then its compressors applied, the
initial masks, runs the strategy's `setup` (e.g. a mask policy's initial pruning on one client),
applies and binds the masks, and returns the `PreparedRun`: the server side of the run, which the
round loop (`fedprune.engine.simulation`) and the memory measurement (`measure_memory`) use.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fedprune import comm
from fedprune import masks as M
from fedprune.contracts import ActivationCompressor, Masks, ModelTransform, Payload
from fedprune.data.base import DatasetSplits
from fedprune.engine.client import ClientExecutor, InProcessClients, LocalTrainer
from fedprune.engine.config import RunConfig
from fedprune.engine.parts import MethodParts, build_parts
from fedprune.engine.training import batches
from fedprune.errors import FedpruneError
from fedprune.memory import MemoryReport, measure_training_step
from fedprune.ops.layers import bind_masks
from fedprune.registry import Method, Registry
from fedprune.seeding import numpy_generator, torch_generator


@dataclass
class Federation:
    """What every method of one seed shares: data, client split, base model."""

    config: RunConfig
    seed: int
    data: DatasetSplits
    clients: list[np.ndarray]
    base: nn.Module

    def memory_batch(self, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        """The batch memory is measured on: the first training batch (seeded) of the first
        client that holds a full batch (client 0 but for a small, label-skewed split; the
        largest client if none does), so the footprint is that of a full batch."""
        size = batch_size or self.config.batch_size
        client = next((c for c in self.clients if len(c) >= size),
                      max(self.clients, key=len))
        index = next(batches(client, size, 1, torch_generator(self.seed, "memory-batch")))
        return self.data.train.batch(index, train=True)


def make_federation(
    registry: Registry, config: RunConfig, seed: int, data: DatasetSplits
) -> Federation:
    """Split ``data`` over the clients and build the base model, both from ``seed`` alone."""
    options = config.component_options(config.partition)
    if config.partition == "dirichlet":
        options.setdefault("alpha", config.dirichlet_alpha)
    partitioner = registry.get(config.partition, "partitioner").build(**options)
    clients = partitioner.split(
        data.train.targets, config.clients, numpy_generator(seed, "partition")
    )
    base = build_base_model(registry, config, data.num_classes, data.input_shape, seed)
    return Federation(config, seed, data, clients, base)


def build_base_model(
    registry: Registry, config: RunConfig, num_classes: int, input_shape: tuple, seed: int
) -> nn.Module:
    """The model every method of this seed starts from, initialised from the seed alone."""
    component = registry.get(config.model, "model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch_generator(seed, "model-init").initial_seed())
        try:
            return component.build(
                num_classes=num_classes, input_shape=tuple(input_shape),
                **config.component_options(config.model),
            )
        except RuntimeError as exc:
            raise FedpruneError(f"model {config.model!r} cannot be built: {exc}") from exc


def method_model(
    base: nn.Module, parts: MethodParts, example: Tensor | None = None
) -> nn.Module:
    """A copy of ``base`` with the method's transforms, then compressors, applied (each
    compressor calibrated on ``example``, a training batch, when given).

    Transforms must keep the prunable weights' `Parameter` objects; compressors every
    parameter: otherwise methods would not start from the same weights, or masks and optimizer
    would follow stale tensors. Either is refused with the component's name.
    """
    model = copy.deepcopy(base)
    prunable = {n: m.weight for n, m in M.prunable_parameters(model, True).items()}
    for transform in parts.many(ModelTransform):
        transform.apply(model)
        _same_parameters(model, prunable, transform, "model transform", prunable_only=True)
    for compressor in parts.many(ActivationCompressor):
        before = dict(model.named_parameters())
        compressor.apply(model)
        _same_parameters(model, before, compressor, "activation compressor")
        if example is not None:
            with torch.random.fork_rng(devices=[]):
                compressor.calibrate(model, example)
    return model


def _same_parameters(
    model: nn.Module, before: Mapping[str, Tensor], part: Any, what: str,
    prunable_only: bool = False,
) -> None:
    after: dict[str, Tensor] = dict(model.named_parameters())
    if prunable_only:
        after = {n: m.weight for n, m in M.prunable_parameters(model, True).items()}
    changed = sorted(n for n in set(before) | set(after) if before.get(n) is not after.get(n))
    if changed:
        raise FedpruneError(
            f"{what} {type(part).__name__} replaced or renamed parameters ({', '.join(changed[:3])}"
            f"{'...' if len(changed) > 3 else ''}); a {what} must keep every Parameter object"
        )


def initial_masks(model: nn.Module, parts: MethodParts, density: float, seed: int) -> Masks | None:
    """Masks at ``density`` over the prunable weights (None for dense methods)."""
    if not parts.method.sparse:
        return None
    prunable = M.prunable_parameters(model, parts.settings.prune_classifier)
    shapes = {name: module.weight.shape for name, module in prunable.items()}
    densities = M.DISTRIBUTIONS[parts.settings.distribution](shapes, density)
    counts = M.target_counts(shapes, densities)
    if parts.settings.init == "magnitude":
        return M.top_masks({n: m.weight.detach().abs() for n, m in prunable.items()}, counts)
    return M.random_masks(shapes, counts, torch_generator(seed, "initial-mask"))


@dataclass
class PreparedRun:
    """One prepared run: the server side a strategy sees (`fedprune.contracts.ServerContext`).

    ``state`` is the global model state, ``masks`` the global masks, ``model`` the one model
    object clients train on in turn. ``targets`` are the per-layer counts of the initial masks,
    which fixed-size strategies never exceed (after setup: a strategy may choose them).
    ``task_bytes`` counts (up, down) the traffic of non-training client tasks.
    """

    parts: MethodParts
    config: RunConfig
    seed: int
    federation: Federation
    model: nn.Module
    masks: Masks | None
    trainer: LocalTrainer
    executor: ClientExecutor
    state: dict[str, Tensor] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)
    sampler: torch.Generator = field(default_factory=torch.Generator)
    task_bytes: list[int] = field(default_factory=lambda: [0, 0])

    @property
    def num_clients(self) -> int:
        return len(self.federation.clients)

    @property
    def client_sizes(self) -> list[int]:
        return [len(c) for c in self.federation.clients]

    def generator(self, *keys: object) -> torch.Generator:
        return torch_generator(self.seed, *keys)

    def numpy_generator(self, *keys: object) -> np.random.Generator:
        return numpy_generator(self.seed, *keys)

    def sample_clients(self, round: int) -> list[int]:
        """This round's clients, without replacement, from the run's sampling stream."""
        config = self.config
        chosen = torch.randperm(config.clients, generator=self.sampler)
        return sorted(chosen[: config.clients_per_round].tolist())

    def run_clients(
        self, task: str, clients: Iterable[int], payload: Payload
    ) -> Iterator[tuple[int, int, Payload]]:
        chosen = sorted(clients)
        down = comm.payload_bytes(payload) + comm.state_bytes(self.state, self.masks)
        for client, samples, reply in self.executor.task(task, chosen, self.state, self.masks,
                                                         payload):
            self.task_bytes[0] += comm.payload_bytes(reply)
            self.task_bytes[1] += down
            yield client, samples, reply

    def snapshot_state(self) -> None:
        """Take the model's current (masked) weights as the global state."""
        self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def prepare(
    registry: Registry, method: Method, federation: Federation, setup: bool = True,
    executor: Callable[[LocalTrainer], ClientExecutor] = InProcessClients,
) -> PreparedRun:
    """The ready run of ``method`` on ``federation`` (see the module docstring).

    ``setup=False`` skips the strategy's setup: for a run about to load a checkpoint, which
    holds setup's outcome. ``executor`` makes the `ClientExecutor` that runs the clients
    (default: in this process).
    """
    config, seed = federation.config, federation.seed
    parts = build_parts(registry, method, config)
    model = method_model(federation.base, parts, federation.memory_batch()[0])
    device = torch.device(config.device)
    model.to(device)
    masks = initial_masks(model, parts, config.density, seed)
    if masks is not None:
        masks = {n: m.to(device) for n, m in masks.items()}
    trainer = LocalTrainer(model, parts, config, federation.data.train, federation.clients, seed)
    run = PreparedRun(parts, config, seed, federation, model, masks, trainer, executor(trainer),
                      sampler=torch_generator(seed, "client-sampling"))
    run.snapshot_state()  # the unmasked initial weights: setup may start from the dense model
    if setup:
        parts.strategy.setup(run)
    run.targets = {n: int(m.sum()) for n, m in (run.masks or {}).items()}
    if run.masks is not None:
        M.apply_masks(run.state, run.masks)
        model.load_state_dict(run.state)
    bind_masks(model, run.masks)
    return run


def measure_memory(run: PreparedRun, batch: tuple[Tensor, Tensor]) -> MemoryReport:
    """One training step of the run's client model as it will train (current masks bound).

    Runs on the run's model itself (`measure_training_step` restores its parameters, buffers,
    gradients and mode; a copy would cost more than the step on a small model) under a forked
    RNG, so torch's global generator is untouched too: measuring never changes a result.
    """
    model = run.model
    device = torch.device(run.config.device)
    x, y = batch
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            return measure_training_step(
                model, x.to(device), y.to(device), run.masks,
                lr=run.config.lr, momentum=run.config.momentum,
            )
    except RuntimeError as exc:  # shapes the model cannot take, out of memory, a bad device
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FedpruneError(
            f"{run.parts.method.name}: one training step of model {run.config.model!r} on "
            f"input {tuple(x.shape[1:])} with batch {len(x)} failed: {first}"
        ) from exc
