"""From a method recipe to its parts: one built component per slot, typed by its contract.

`build_parts` walks `fedprune.registry.KINDS`, so a new kind needs no code here. Parts are read
by contract class, ``parts.one(PruningCriterion)`` or ``parts.many(ActivationCompressor)``, which
gives the static type without naming the kind again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from fedprune.contracts import Strategy
from fedprune.engine.config import MethodSettings, RunConfig
from fedprune.errors import FedpruneError
from fedprune.registry import KINDS, Method, Registry, kind_of_contract

T = TypeVar("T")


@dataclass
class MethodParts:
    """A method with each slot's component built from its options."""

    method: Method
    settings: MethodSettings
    parts: dict[str, Any] = field(default_factory=dict)  # slot -> part, or list of parts

    def one(self, contract: type[T]) -> T | None:
        """The part in the single slot of ``contract``'s kind (None when the slot is empty)."""
        slot = kind_of_contract(contract).slot
        return cast("T | None", self.parts.get(slot or ""))

    def many(self, contract: type[T]) -> list[T]:
        """The parts in the sequence slot of ``contract``'s kind, in order."""
        slot = kind_of_contract(contract).slot
        return cast("list[T]", self.parts.get(slot or "", []))

    def named(self, contract: type[T]) -> list[tuple[str, T]]:
        """`many`, each part with the component name the method gave it (for reports and
        ``name.option`` keys)."""
        slot = kind_of_contract(contract).slot or ""
        return list(zip(self.method.parts.get(slot, ()), self.many(contract), strict=True))

    def need(self, contract: type[T]) -> T:
        """The part in ``contract``'s slot, which the method's strategy requires."""
        part = self.one(contract)
        if part is None:
            raise FedpruneError(
                f"method {self.method.name!r} needs a {kind_of_contract(contract).name}"
            )
        return part

    @property
    def strategy(self) -> Strategy:
        return self.need(Strategy)


def method_options(method: Method, config: RunConfig) -> dict[str, Any]:
    """The recipe's option defaults overridden by the run's options."""
    return {**method.options, **config.options}


def build_parts(registry: Registry, method: Method, config: RunConfig) -> MethodParts:
    """Build every slot of ``method`` with its options; check the strategy uses each one."""
    options = method_options(method, config)

    def build(name: str, kind: str) -> Any:
        own = _component_options(options, name)
        return registry.get(name, kind).build(**own)

    settings = MethodSettings.from_options({k: v for k, v in options.items() if "." not in k})
    parts: dict[str, Any] = {}
    for kind in KINDS:
        if kind.slot is None:
            continue
        name = method.strategy_name() if kind.slot == "strategy" else method.parts.get(kind.slot)
        if kind.many:
            parts[kind.slot] = [build(n, kind.name) for n in (name or ())]
        elif name:
            parts[kind.slot] = build(name, kind.name)
    parts.setdefault("strategy", Strategy())  # a dense method: the no-op base strategy
    _check_slots(method, parts["strategy"])
    return MethodParts(method, settings, parts)


def _component_options(options: Mapping[str, Any], name: str) -> dict[str, Any]:
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in options.items() if k.startswith(prefix)}


#: Slots every method may fill, whatever its strategy (they act on training, not on masks).
_ALWAYS = {"regularizer", "model_transforms", "activation_compressors", "strategy"}


def _check_slots(method: Method, strategy: Strategy) -> None:
    """A component in a slot the strategy never calls would be silently ignored: refuse it."""
    unused = [
        f"{slot} {method.parts[slot]!r}" for slot in method.parts
        if slot not in _ALWAYS and slot not in strategy.uses
    ]
    if unused:
        raise FedpruneError(
            f"method {method.name!r}: its strategy {method.strategy_name()!r} does not use "
            f"{', '.join(unused)}; it uses {', '.join(sorted(strategy.uses)) or 'no such slot'}"
        )
