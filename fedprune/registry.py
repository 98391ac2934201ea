"""Named records that plugins register, and the registry that resolves `A+B` method specs.

Registration hooks return `Component` and `Method` records. The host collects them, refuses
duplicates (naming both plugins), and from then on choosing `--methods fedmef,feddst` is a lookup.
Components and methods share one namespace, so `feddst+sap` is unambiguous: `sap` names a
component, and its kind says which slot of `feddst` it goes into.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedprune.errors import FedpruneError, PluginError

#: Component kinds, in the order `fedprune plugins` lists them. The hook for kind ``k`` is
#: ``fedprune_<KIND_HOOKS[k]>``.
KIND_HOOKS: dict[str, str] = {
    "method": "methods",
    "pruning_criterion": "pruning_criteria",
    "growth_criterion": "growth_criteria",
    "regularizer": "regularizers",
    "activation_compressor": "activation_compressors",
    "model_transform": "model_transforms",
    "schedule": "schedules",
    "mask_policy": "mask_policies",
    "dataset": "datasets",
    "model": "models",
    "partitioner": "partitioners",
}

#: Method slots that hold one component (``A+B`` replaces it) ...
SINGLE_SLOTS = ("pruning_criterion", "growth_criterion", "regularizer", "schedule", "mask_policy")
#: ... and slots that hold a sequence (``A+B`` appends B, applied in order).
MULTI_SLOTS = ("model_transforms", "activation_compressors")
_SLOT_OF_KIND = {
    "pruning_criterion": "pruning_criterion",
    "growth_criterion": "growth_criterion",
    "regularizer": "regularizer",
    "schedule": "schedule",
    "mask_policy": "mask_policy",
    "model_transform": "model_transforms",
    "activation_compressor": "activation_compressors",
}
MIXABLE_KINDS = tuple(_SLOT_OF_KIND)


@dataclass(frozen=True)
class Component:
    """A named factory of one kind of part.

    ``factory(**options)`` builds the part; its keyword parameters are the component's options
    (set from the command line as ``-o name.option=value``), so its signature is its documentation.
    """

    name: str
    factory: Callable[..., Any]
    summary: str = ""
    kind: str = ""  # filled in by the host from the hook that returned the record
    plugin: str = ""  # filled in by the host: the plugin that registered it

    def options(self) -> dict[str, Any]:
        """Option names and their defaults, read from the factory's signature."""
        out = {}
        for p in inspect.signature(self.factory).parameters.values():
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                out[p.name] = None if p.default is p.empty else p.default
        return out

    def build(self, **options: Any) -> Any:
        known = self.options()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise FedpruneError(
                f"{self.kind} {self.name!r} has no option {', '.join(unknown)}; "
                f"its options are: {', '.join(known) or 'none'}"
            )
        try:
            return self.factory(**options)
        except (TypeError, ValueError) as exc:
            raise FedpruneError(f"{self.kind} {self.name!r}: {exc}") from exc


@dataclass(frozen=True)
class Method:
    """A recipe: which component fills each slot, plus how masks are made and adjusted.

    ``adjust`` says where masks change in adjustment rounds: ``"client"`` (each client prunes and
    grows after local training, the server votes, as FedDST), ``"server"`` (clients upload growth
    scores, the server prunes and grows, as PruneFL and FedMef) or ``None`` (fixed mask).
    ``mask_policy`` (optional) replaces the server's fixed-count prune-and-grow step, e.g. to
    let an objective choose the model size.
    ``sparse=False`` is a dense method: no masks, and ``--density`` does not apply.
    ``options`` are defaults for component options, keyed ``"component.option"``, plus the
    method's own keys (``min_votes``, ``distribution``, ``init``, ``prune_classifier``).
    """

    name: str
    summary: str = ""
    sparse: bool = True
    adjust: str | None = None
    pruning_criterion: str | None = None
    growth_criterion: str | None = None
    regularizer: str | None = None
    schedule: str | None = None
    mask_policy: str | None = None
    model_transforms: tuple[str, ...] = ()
    activation_compressors: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "method"
    plugin: str = ""

    def __post_init__(self) -> None:
        if self.adjust not in (None, "client", "server"):
            raise PluginError(
                f"method {self.name!r}: adjust must be 'client', 'server' or None, "
                f"not {self.adjust!r}"
            )
        if self.adjust and not self.sparse:
            raise PluginError(f"method {self.name!r} adjusts masks, so it must be sparse")
        if self.mask_policy and self.adjust != "server":
            raise FedpruneError(
                f"{self.name!r}: a mask policy ({self.mask_policy!r}) replaces the server's "
                "prune-and-grow, so it needs a method that adjusts on the server"
            )
        if self.adjust and not (self.pruning_criterion and self.growth_criterion and self.schedule):
            raise PluginError(
                f"method {self.name!r} adjusts masks, so it needs a pruning_criterion, "
                "a growth_criterion and a schedule"
            )

    def slots(self) -> dict[str, object]:
        """Slot name -> component name(s), for tracking and results."""
        return {s: getattr(self, s) for s in SINGLE_SLOTS} | {
            s: list(getattr(self, s)) for s in MULTI_SLOTS
        }

    def components(self) -> list[str]:
        """Every component name the recipe uses, in slot order."""
        names = [getattr(self, s) for s in SINGLE_SLOTS if getattr(self, s)]
        return names + [n for s in MULTI_SLOTS for n in getattr(self, s)]


class Registry:
    """Every registered record by name, one namespace across kinds."""

    def __init__(self) -> None:
        self._records: dict[str, Component | Method] = {}

    def add(self, record: Component | Method) -> None:
        if not isinstance(record, (Component, Method)) or not record.name:
            raise PluginError(
                f"plugin {record.plugin if hasattr(record, 'plugin') else '?'!r} registered "
                f"{record!r}; expected a named fedprune.Component or fedprune.Method"
            )
        if "+" in record.name or "," in record.name:
            raise PluginError(
                f"plugin {record.plugin!r} registered {record.name!r}: names cannot contain "
                "'+' or ','"
            )
        old = self._records.get(record.name)
        if old is not None:
            raise PluginError(
                f"{record.name!r} is registered twice: as a {old.kind} by plugin {old.plugin!r} "
                f"and as a {record.kind} by plugin {record.plugin!r}; uninstall or disable one"
            )
        self._records[record.name] = record

    def names(self, kind: str | None = None) -> list[str]:
        return sorted(n for n, r in self._records.items() if kind is None or r.kind == kind)

    def records(self, kind: str | None = None) -> list[Component | Method]:
        return [self._records[n] for n in self.names(kind)]

    def find(self, name: str) -> Component | Method | None:
        """The record called ``name``, of any kind."""
        return self._records.get(name)

    def get(self, name: str, kind: str) -> Any:
        record = self._records.get(name)
        if record is None or record.kind != kind:
            raise FedpruneError(_unknown(name, kind, self.names(kind)))
        return record

    def method(self, spec: str) -> Method:
        """Resolve ``"base+comp+comp"``: each component goes into the slot its kind names."""
        base, *extras = [part.strip() for part in spec.split("+")]
        method = self.get(base, "method")
        for name in extras:
            record = self._records.get(name)
            if record is None or record.kind not in _SLOT_OF_KIND:
                mixable = [n for k in MIXABLE_KINDS for n in self.names(k)]
                raise FedpruneError(_unknown(name, "mixable component", mixable, spec))
            slot = _SLOT_OF_KIND[record.kind]
            if slot in MULTI_SLOTS:
                value: Any = tuple(n for n in getattr(method, slot) if n != name) + (name,)
            else:
                value = name
            method = dataclasses.replace(method, name=spec, **{slot: value})
        for name in method.components():
            if name not in self._records:
                raise FedpruneError(
                    f"method {method.name!r} (plugin {method.plugin!r}) uses {name!r}, which no "
                    "installed plugin registers; install the plugin that provides it"
                )
        return method


def _unknown(name: str, kind: str, available: Iterable[str], spec: str | None = None) -> str:
    available = list(available)
    where = f" in {spec!r}" if spec else ""
    hint = difflib.get_close_matches(name, available, n=1)
    maybe = f" Did you mean {hint[0]!r}?" if hint else ""
    return (
        f"unknown {kind} {name!r}{where}.{maybe} Available: {', '.join(available) or 'none'} "
        "(see `fedprune plugins`)"
    )
