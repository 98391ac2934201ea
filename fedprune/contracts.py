"""What each kind of component provides: small base classes whose optional methods are no-ops.

A component subclasses its kind's base class and overrides what it needs; the engine calls every
method unconditionally and reads capabilities from declared class attributes (``uses_gradient``,
``observes_training``, ``saves_memory`` ...), never by probing. A component written before these
classes existed (a plain object with the right methods) still works: `adapt` wraps it once when it
is built and warns (DeprecationWarning) once per component.

The objects the engine hands to components (`RoundPlan`, `ClientContext`, `ClientResult`,
`ServerContext`) are part of the contract and live here too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from fedprune.errors import FedpruneError, PluginError

if TYPE_CHECKING:  # annotations only: importing the contracts must not import torch
    import numpy as np
    import torch
    from torch import Tensor, nn

    from fedprune.data.base import ArrayDataset
    from fedprune.engine.config import RunConfig

Masks = dict[str, "Tensor"]
Payload = dict[str, "Tensor"]

__all__ = [
    "ActivationCompressor",
    "ClientContext",
    "ClientResult",
    "GrowthCriterion",
    "MaskPolicy",
    "ModelTransform",
    "Partitioner",
    "PruningCriterion",
    "Regularizer",
    "RoundPlan",
    "Schedule",
    "ServerContext",
    "Strategy",
    "adapt",
]


# ------------------------------------------------------------------------ what the engine passes


@dataclass(frozen=True)
class RoundPlan:
    """What the strategy asks of this round's clients.

    ``counts``: weights per layer to prune and regrow (empty in a plain training round).
    ``info``: strategy-specific instructions, JSON-serialisable (e.g. the layers FedTiny adjusts),
    so the plan can travel to a remote client.
    """

    round: int
    counts: Mapping[str, int] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def adjusting(self) -> bool:
        return any(self.counts.values())


@dataclass
class ClientContext:
    """What a component sees on a client: the model being trained and the round's plan.

    ``lr`` is this round's learning rate (the run's schedule), ``lr0`` the initial one.
    ``gradient_batch()`` draws one mini-batch of the client's data (seeded); `growth_gradients`
    is the dense gradient of such a batch w.r.t. each prunable layer's effective weight;
    ``data[indices]`` are the client's samples.
    """

    model: nn.Module
    params: dict[str, nn.Parameter]
    prunable: dict[str, nn.Conv2d | nn.Linear]
    masks: Masks | None
    plan: RoundPlan
    client: int
    samples: int
    total_steps: int
    lr: float
    lr0: float
    parts: Any  # fedprune.engine.parts.MethodParts (typed there; kept loose to avoid a cycle)
    config: RunConfig
    gradient_batch: Callable[[], tuple[Tensor, Tensor]]
    data: ArrayDataset | None = None
    indices: np.ndarray | None = None
    optimizer: torch.optim.Optimizer | None = None

    @property
    def round(self) -> int:
        return self.plan.round

    @property
    def counts(self) -> Mapping[str, int]:
        return self.plan.counts

    @property
    def adjusting(self) -> bool:
        return self.plan.adjusting

    def growth_gradients(self, layers: Iterable[str] | None = None) -> dict[str, Tensor]:
        """The growth gradients of ``layers`` (default: every prunable layer)."""
        from fedprune.ops.layers import growth_gradients

        prunable = self.prunable if layers is None else {n: self.prunable[n] for n in layers}
        x, y = self.gradient_batch()
        return growth_gradients(self.model, prunable, x, y)


@dataclass
class ClientResult:
    """What a strategy's client half sends back besides the weights.

    ``masks``: the client's new masks when it changed them (their positions are uploaded).
    ``payload``: named tensors uploaded as they are (their bytes are counted exactly), e.g.
    growth scores, or top-k indices and values.
    """

    masks: Masks | None = None
    payload: Payload = field(default_factory=dict)


class ServerContext(Protocol):
    """The server side of a run, as a strategy sees it (the simulation and Flower provide it).

    ``masks`` and ``state`` (the global model state) may be replaced in ``setup``.
    ``run_clients(task, clients, payload)`` runs the strategy's ``client_task(task, ...)`` on each
    listed client and yields ``(client, samples, reply)`` in client order.
    """

    config: RunConfig
    seed: int
    parts: Any
    masks: Masks | None
    state: dict[str, Tensor]
    model: nn.Module

    @property
    def num_clients(self) -> int: ...

    @property
    def client_sizes(self) -> list[int]: ...

    def generator(self, *keys: object) -> torch.Generator: ...

    def numpy_generator(self, *keys: object) -> np.random.Generator: ...

    def sample_clients(self, round: int) -> list[int]: ...

    def run_clients(
        self, task: str, clients: Iterable[int], payload: Payload
    ) -> Iterator[tuple[int, int, Payload]]: ...


# ---------------------------------------------------------------------------- component kinds


class PruningCriterion:
    """Which active weights to remove: the lowest ``scores`` are pruned.

    ``scores(weight, grad)`` returns a tensor shaped like ``weight``. ``grad`` is the dense
    gradient of one mini-batch where a client adjusts its mask, ``None`` on the server.
    """

    required: ClassVar[tuple[str, ...]] = ("scores",)

    def scores(self, weight: Tensor, grad: Tensor | None) -> Tensor:
        raise NotImplementedError


class GrowthCriterion:
    """Which inactive positions to bring back: the largest ``|scores|`` are grown, at value 0.

    ``scores(weights, grads)`` returns one tensor per layer; ``grads`` holds the dense gradient of
    one mini-batch w.r.t. each layer's effective weight (empty when ``uses_gradient`` is False).
    Criteria that accumulate over local training set ``observes_training`` and get `begin`
    before each client's training and `after_backward` after every local backward pass (dense
    gradients in ``.grad``, before masking). State that must survive between a client's rounds
    goes through `client_state` / `load_client_state`.
    """

    required: ClassVar[tuple[str, ...]] = ("scores",)

    uses_gradient: ClassVar[bool] = True
    observes_training: ClassVar[bool] = False

    def scores(self, weights: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> Masks:
        raise NotImplementedError

    def begin(self, params: Mapping[str, nn.Parameter]) -> None:
        """Before a client's local training."""

    def after_backward(self, params: Mapping[str, nn.Parameter]) -> None:
        """After every local backward pass (only called when ``observes_training``)."""

    def consumed(self) -> None:
        """The scores were uploaded in an adjustment round (reset what accumulates)."""

    def client_state(self) -> Payload:
        """This client's state to keep until its next round (empty: none)."""
        return {}

    def load_client_state(self, state: Payload) -> None:
        """Restore what `client_state` returned last time this client trained (may be empty)."""


class Regularizer:
    """A penalty added to the local loss, and optionally the step's learning rate.

    `begin` runs before a client's local training, `penalty` every step (None: no penalty),
    `learning_rate(step, total_steps, lr, lr0)` sets step ``step``'s rate from the round's ``lr``
    and the initial ``lr0``, `after_step(lr)` follows every optimizer step, and `end` returns
    metrics of the client's round (averaged over the round's clients and recorded with each
    adjustment round).
    """

    def begin(self, ctx: ClientContext) -> None:
        """Before local training."""

    def penalty(self, model: nn.Module) -> Tensor | None:
        return None

    def learning_rate(self, step: int, total_steps: int, lr: float, lr0: float) -> float:
        return lr

    def after_step(self, lr: float) -> None:
        """After every optimizer step, at that step's ``lr``: a proximal step for a penalty
        that is not differentiable (an un-squared norm), which `penalty` cannot minimise
        stably with momentum."""

    def end(self, ctx: ClientContext) -> dict[str, float]:
        return {}


class ActivationCompressor:
    """Changes what a model keeps for backward, in place, keeping every `Parameter` object.

    ``saves_memory``: False for a compressor that does not aim to save activation memory (its
    layers then are not required to save fewer bytes). ``min_weight_grad_cosine``: the cosine
    similarity to the exact weight gradient its approximation guarantees on a layer (an
    instance may set it from its options); input gradients must stay exact. Both are checked
    by `fedprune.testing.check_activation_compressor`.
    `skipped` names the layers it left alone in the last `apply` (and why), for reports.
    ``accountings``: see `ModelTransform`.

    Pitfall: a compressed copy saves nothing where another op keeps the full tensor anyway (a
    ReLU keeps its output for its own backward, BatchNorm its input): the copy is then stored
    on top of it and costs memory. Share that op's copy or leave the layer alone.
    """

    required: ClassVar[tuple[str, ...]] = ("apply",)

    saves_memory: bool = True
    min_weight_grad_cosine: float = 0.99
    accountings: ClassVar[Mapping[str, Mapping[str, Any] | None]] = {}

    def apply(self, model: nn.Module) -> None:
        raise NotImplementedError

    def calibrate(self, model: nn.Module, inputs: Tensor) -> None:
        """Once after `apply`, with one training batch: a compressor may look at the autograd
        graph (e.g. to leave alone layers whose input another op keeps anyway)."""

    def skipped(self) -> dict[str, str]:
        return {}


class ModelTransform:
    """Changes a model's architecture before training (e.g. NSConv), reusing its weight
    parameters so every method starts from the same initial weights.

    ``accountings`` (also on `ActivationCompressor`): per named memory accounting of
    ``fedprune memory --accounting NAME``, the options that make the part store for backward
    what that accounting counts (e.g. a paper's storage format), or None where the part has no
    place in it. Unnamed accountings leave the part as configured.
    """

    required: ClassVar[tuple[str, ...]] = ("apply",)
    accountings: ClassVar[Mapping[str, Mapping[str, Any] | None]] = {}

    def apply(self, model: nn.Module) -> None:
        raise NotImplementedError


class Schedule:
    """In which rounds masks change, and by how much.

    ``fraction(round, total_rounds)``: the share of each layer's active weights to prune and
    regrow in that round (0: not an adjustment round). ``rate(round, total_rounds)``: the
    decayed share itself, also between adjustment rounds (FedRTS's core-link count follows it).
    """

    required: ClassVar[tuple[str, ...]] = ("fraction",)

    def fraction(self, round: int, total_rounds: int) -> float:
        raise NotImplementedError

    def rate(self, round: int, total_rounds: int) -> float:
        return self.fraction(round, total_rounds)

    def adjustment_rounds(self, total_rounds: int) -> list[int]:
        """Rounds with a positive fraction (for the warning when a run cannot adjust)."""
        return [r for r in range(1, total_rounds + 1) if self.fraction(r, total_rounds) > 0]


class MaskPolicy:
    """A server-side rule replacing the fixed-count prune-and-grow of server adjustment.

    ``update(...)`` sees all layers at once (an objective may trade layers off); ``scores`` are
    the averaged growth scores, ``counts`` the schedule's per-layer budget. Before round 1,
    ``initial_client`` may pick a client on which ``initial`` refines the initial masks.
    ``fixed_size``: False when the policy chooses the model size.
    """

    required: ClassVar[tuple[str, ...]] = ("update",)

    fixed_size: ClassVar[bool] = False

    def update(
        self,
        masks: Masks,
        weights: Mapping[str, Tensor],
        scores: Mapping[str, Tensor],
        counts: Mapping[str, int],
        round: int,
        total_rounds: int,
    ) -> Masks:
        raise NotImplementedError

    def initial_client(
        self, client_sizes: list[int], config: RunConfig, generator: torch.Generator
    ) -> int | None:
        """On the server before round 1: the client whose data `initial` refines the masks
        with (None: no initial step). ``client_sizes``: samples per client."""
        return None

    def initial(
        self,
        model: nn.Module,
        masks: Masks,
        data: ArrayDataset,
        indices: np.ndarray,
        config: RunConfig,
        generator: torch.Generator,
    ) -> Masks:
        """On that client: refine the initial masks from the unmasked initial weights and the
        client's samples ``data[indices]``; changes to the model's weights are kept."""
        return masks

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class Strategy:
    """Where and how masks change: a client half and a server half of one algorithm.

    The engine runs the round loop and calls, in order: `setup` once before round 1; per round
    `plan`, then on every sampled client (after local training) `client_end`, on the server
    `fold` for every client's result as it arrives, and `server_masks` after aggregation.
    ``uses`` lists the method slots it calls (a component put into any other slot would be
    ignored, so the registry refuses it). ``fixed_size``: every layer keeps its target count.
    Server-side state that persists across rounds goes through `state_dict`.
    """

    uses: ClassVar[frozenset[str]] = frozenset()
    fixed_size: ClassVar[bool] = True

    def setup(self, server: ServerContext) -> None:
        """Before round 1: may replace ``server.masks`` and ``server.state``."""

    def plan(self, server: ServerContext, round: int) -> RoundPlan:
        return RoundPlan(round)

    def client_end(self, ctx: ClientContext) -> ClientResult:
        """On the client, after local training (the model holds the client's weights)."""
        return ClientResult()

    def client_task(self, task: str, ctx: ClientContext, payload: Payload) -> Payload:
        """On the client: a non-training task the server asked for in ``run_clients``."""
        raise FedpruneError(f"{type(self).__name__} has no client task {task!r}")

    def begin_round(self, server: ServerContext, plan: RoundPlan) -> None:
        """On the server, before the first client's result of the round is folded in."""

    def fold(
        self, server: ServerContext, plan: RoundPlan, client: int, samples: int,
        state: Mapping[str, Tensor], result: ClientResult,
    ) -> None:
        """On the server: one client's result (``state``: its weights), as it arrives."""

    def server_masks(
        self, server: ServerContext, plan: RoundPlan, state: dict[str, Tensor],
        votes: Mapping[str, Tensor],
    ) -> Masks | None:
        """On the server after aggregation: the new global masks (``state``: the averaged
        weights, which the strategy may change in place; ``votes``: sample-weighted share of
        clients holding each position)."""
        return server.masks

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class Partitioner:
    """Splits a training set over clients: ``split(labels, num_clients, generator)`` returns the
    indices of each client; every sample in exactly one client."""

    required: ClassVar[tuple[str, ...]] = ("split",)

    def split(
        self, labels: np.ndarray, num_clients: int, generator: np.random.Generator
    ) -> list[np.ndarray]:
        raise NotImplementedError


# ----------------------------------------------------------------------------------- adapting

C = TypeVar("C")
_warned: set[str] = set()


def _required(contract: type) -> tuple[str, ...]:
    """Methods the contract leaves abstract (declared in its ``required`` tuple)."""
    return getattr(contract, "required", ())


def _interface(contract: type) -> list[str]:
    """Public methods and class attributes the contract declares (its bases' included)."""
    names: list[str] = []
    for klass in reversed(contract.__mro__[:-1]):
        for name in vars(klass):
            if not name.startswith("_") and name not in names:
                names.append(name)
    return names


class _Adapted:
    """A duck-typed component behind its kind's base class: its own methods where it has
    them, the base class's no-op defaults elsewhere, other attributes forwarded."""

    _inner: Any

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)


_ADAPTERS: dict[type, type] = {}


def adapt(obj: Any, contract: type[C], label: str) -> C:
    """``obj`` as an instance of ``contract``: itself if it subclasses it, else wrapped once.

    Raises `PluginError` when a required method is missing; warns (DeprecationWarning, once per
    ``label``) when wrapping.
    """
    if isinstance(obj, contract):
        return obj
    missing = [n for n in _required(contract) if not callable(getattr(obj, n, None))]
    if missing:
        raise PluginError(
            f"{label} has no {', '.join(f'{n}()' for n in missing)}; a "
            f"{contract.__name__} must define {', '.join(missing)} "
            f"(subclass fedprune.{contract.__name__})"
        )
    if label not in _warned:
        _warned.add(label)
        warnings.warn(
            f"{label} does not subclass fedprune.{contract.__name__}; it is adapted for now. "
            f"Subclass fedprune.{contract.__name__} (see docs/hooks.md)",
            DeprecationWarning,
            stacklevel=3,
        )
    klass = _ADAPTERS.get(contract)
    if klass is None:
        klass = type(f"Adapted{contract.__name__}", (_Adapted, contract), {})
        _ADAPTERS[contract] = klass
    wrapper: Any = object.__new__(klass)
    object.__setattr__(wrapper, "_inner", obj)
    for name in _interface(contract):
        if hasattr(obj, name):
            object.__setattr__(wrapper, name, getattr(obj, name))
    return wrapper
