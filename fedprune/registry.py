"""Named records that plugins register, the one table of component kinds, and the registry that
resolves ``A+B`` method specs.

Registration hooks return `Component` and `Method` records. The host collects them, refuses
duplicates (naming both plugins), and from then on choosing ``--methods fedmef,feddst`` is a
lookup. Components and methods share one namespace, so ``feddst+sap`` is unambiguous: ``sap``
names a component, and its kind says which slot of ``feddst`` it goes into.

`KINDS` is the only list of kinds: it drives the registration hooks (`fedprune.hookspecs`), the
`Method` record's slots, part building (`fedprune.engine.parts`), name resolution and the contract
checks (`fedprune.testing`). Adding a kind is one entry. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fedprune import contracts as C
from fedprune.errors import FedpruneError, PluginError


@dataclass(frozen=True)
class Kind:
    """One kind of registered record.

    ``hook``: the registration hook is ``fedprune_<hook>``. ``contract``: the base class built
    parts are adapted to (None: a plain factory, e.g. datasets). ``slot``: the `Method` slot that
    holds it (None: not a method part); ``many``: the slot holds a sequence (``A+B`` appends).
    ``default``: the part a method gets when it names none (None: the slot stays empty).
    """

    name: str
    hook: str
    summary: str
    example: str
    contract: type | None = None
    slot: str | None = None
    many: bool = False
    default: str | None = None


def _example(body: str) -> str:
    return body.strip("\n")


KINDS: tuple[Kind, ...] = (
    Kind(
        "method", "methods",
        "methods: recipes naming a component for each slot they use",
        _example('''
@fedprune.hookimpl
def fedprune_methods():
    return [fedprune.Method(
        "rigl_fl", "RigL-style dynamic sparse FL",
        strategy="server_adjust", pruning_criterion="magnitude",
        growth_criterion="gradient", schedule="cosine")]
'''),
    ),
    Kind(
        "pruning_criterion", "pruning_criteria",
        "pruning criteria: which active weights to remove",
        _example('''
class Taylor(fedprune.PruningCriterion):
    def scores(self, weight, grad):
        if grad is None:  # on the server: no gradient
            return weight.abs()
        return (weight * grad).abs()

@fedprune.hookimpl
def fedprune_pruning_criteria():
    return [fedprune.Component("taylor", Taylor, "|w * dL/dw|")]
'''),
        C.PruningCriterion, "pruning_criterion",
    ),
    Kind(
        "growth_criterion", "growth_criteria",
        "growth criteria: which inactive positions to bring back",
        _example('''
class GradientGrowth(fedprune.GrowthCriterion):
    def scores(self, weights, grads):
        return dict(grads)

@fedprune.hookimpl
def fedprune_growth_criteria():
    return [fedprune.Component("gradient", GradientGrowth, "RigL: |dL/dw|")]
'''),
        C.GrowthCriterion, "growth_criterion",
    ),
    Kind(
        "regularizer", "regularizers",
        "regularizers: a penalty added to the local loss (and the step's learning rate)",
        _example('''
class L2(fedprune.Regularizer):
    def __init__(self, weight_decay=1e-4):
        self.wd = weight_decay
    def penalty(self, model):
        return self.wd * sum(p.pow(2).sum() for p in model.parameters())

@fedprune.hookimpl
def fedprune_regularizers():
    return [fedprune.Component("l2", L2, "plain L2 penalty")]
'''),
        C.Regularizer, "regularizer",
    ),
    Kind(
        "activation_compressor", "activation_compressors",
        "activation compressors: change what a model keeps for backward",
        _example('''
@fedprune.hookimpl
def fedprune_activation_compressors():
    return [fedprune.Component("sap", "my_package.sap:SAP", "keep the top of conv inputs")]
'''),
        C.ActivationCompressor, "activation_compressors", many=True,
    ),
    Kind(
        "model_transform", "model_transforms",
        "model transforms: change a model's architecture before training",
        _example('''
@fedprune.hookimpl
def fedprune_model_transforms():
    return [fedprune.Component("nsconv", NSConv, "BatchNorm-free standardised convs")]
'''),
        C.ModelTransform, "model_transforms", many=True,
    ),
    Kind(
        "schedule", "schedules",
        "adjustment schedules: in which rounds masks change, and by how much",
        _example('''
class Every10(fedprune.Schedule):
    def fraction(self, round, total_rounds):
        return 0.2 if round % 10 == 0 else 0.0

@fedprune.hookimpl
def fedprune_schedules():
    return [fedprune.Component("every10", Every10, "20% every 10 rounds")]
'''),
        C.Schedule, "schedule",
    ),
    Kind(
        "mask_policy", "mask_policies",
        "mask policies: a server rule replacing fixed-count prune-and-grow",
        _example('''
class KeepSize(fedprune.MaskPolicy):
    def update(self, masks, weights, scores, counts, round, total_rounds):
        return masks

@fedprune.hookimpl
def fedprune_mask_policies():
    return [fedprune.Component("keep", KeepSize, "never change the mask")]
'''),
        C.MaskPolicy, "mask_policy",
    ),
    Kind(
        "strategy", "strategies",
        "adjustment strategies: where and how masks change (client half and server half)",
        _example('''
class Frozen(fedprune.Strategy):
    """Masks never change (the default for sparse methods)."""

@fedprune.hookimpl
def fedprune_strategies():
    return [fedprune.Component("frozen", Frozen, "masks never change")]
'''),
        C.Strategy, "strategy", default="fixed",
    ),
    Kind(
        "dataset", "datasets",
        "datasets: ``factory(root=None, **options) -> fedprune.data.DatasetSplits``",
        _example('''
@fedprune.hookimpl
def fedprune_datasets():
    return [fedprune.Component("digits", load_digits, "8x8 handwritten digits")]
'''),
    ),
    Kind(
        "model", "models",
        "models: ``factory(num_classes, input_shape, **options) -> torch.nn.Module``",
        _example('''
@fedprune.hookimpl
def fedprune_models():
    return [fedprune.Component("cnn", SmallCNN, "3 conv layers and a classifier")]
'''),
    ),
    Kind(
        "partitioner", "partitioners",
        "partitioners: split a training set over clients",
        _example('''
@fedprune.hookimpl
def fedprune_partitioners():
    return [fedprune.Component("iid", IID, "uniformly random, equal sizes")]
'''),
        C.Partitioner,
    ),
)

KIND_BY_NAME: dict[str, Kind] = {k.name: k for k in KINDS}
#: Kinds that fill a method slot, by slot name.
SLOT_KINDS: dict[str, Kind] = {k.slot: k for k in KINDS if k.slot}
MIXABLE_KINDS = tuple(k.name for k in KINDS if k.slot)


def kind_of_contract(contract: type) -> Kind:
    return next(k for k in KINDS if k.contract is contract)


# -------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Component:
    """A named factory of one kind of part.

    ``factory(**options)`` builds the part; its keyword parameters are the component's options
    (set from the command line as ``-o name.option=value``), so its signature is its
    documentation. A ``"module:attribute"`` string is imported on first use, so listing plugins
    stays fast.
    """

    name: str
    factory: Callable[..., Any] | str
    summary: str = ""
    kind: str = ""  # filled in by the host from the hook that returned the record
    plugin: str = ""  # filled in by the host: the plugin that registered it

    def load(self) -> Callable[..., Any]:
        """The factory (importing it when given as ``"module:attribute"``)."""
        if not isinstance(self.factory, str):
            return self.factory
        module, _, attribute = self.factory.partition(":")
        try:
            target: Any = importlib.import_module(module)
            for part in attribute.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise PluginError(
                f"{self.kind} {self.name!r} (plugin {self.plugin!r}): cannot import its factory "
                f"{self.factory!r}: {type(exc).__name__}: {exc}"
            ) from exc
        return target

    def options(self) -> dict[str, Any]:
        """Option names and their defaults, read from the factory's signature."""
        out = {}
        for p in inspect.signature(self.load()).parameters.values():
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                out[p.name] = None if p.default is p.empty else p.default
        return out

    def build(self, **options: Any) -> Any:
        """The part, built from ``options`` and adapted to its kind's contract."""
        known = self.options()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise FedpruneError(
                f"{self.kind} {self.name!r} has no option {', '.join(unknown)}; "
                f"its options are: {', '.join(known) or 'none'}"
            )
        try:
            built = self.load()(**options)
        except (TypeError, ValueError) as exc:
            raise FedpruneError(f"{self.kind} {self.name!r}: {exc}") from exc
        kind = KIND_BY_NAME.get(self.kind)
        if kind is not None and kind.contract is not None:
            built = C.adapt(built, kind.contract, f"{self.kind} {self.name!r} ({self.plugin})")
        return built


class Method:
    """A recipe: which component fills each slot, and default options.

    Slots are the `KINDS` with a ``slot``: one name each (``pruning_criterion="magnitude"``), or a
    sequence for ``model_transforms`` and ``activation_compressors``. ``strategy`` names where and
    how masks change (default ``"fixed"``: never). ``sparse=False`` is a dense method: no masks,
    and ``--density`` does not apply. ``options`` are defaults for component options, keyed
    ``"component.option"``, plus the method's own settings (``min_votes``, ``distribution``,
    ``init``, ``prune_classifier``).
    """

    __slots__ = ("name", "summary", "sparse", "parts", "options", "kind", "plugin")

    def __init__(
        self,
        name: str,
        summary: str = "",
        *,
        sparse: bool = True,
        options: Mapping[str, Any] | None = None,
        parts: Mapping[str, Any] | None = None,
        kind: str = "method",
        plugin: str = "",
        adjust: str | None = None,
        **slots: Any,
    ) -> None:
        parts = dict(parts or {})
        unknown = sorted(set(slots) - set(SLOT_KINDS))
        if unknown:
            raise PluginError(
                f"method {name!r}: no slot {', '.join(unknown)}; slots are "
                f"{', '.join(SLOT_KINDS)}"
            )
        for slot, value in slots.items():
            if value:
                parts[slot] = tuple(value) if SLOT_KINDS[slot].many else value
        if adjust is not None:
            strategy = {"client": "client_adjust", "server": "server_adjust"}.get(adjust)
            if strategy is None:
                raise PluginError(
                    f"method {name!r}: adjust must be 'client' or 'server', not {adjust!r}"
                )
            warnings.warn(
                f"method {name!r}: Method(adjust={adjust!r}) is deprecated; write "
                f"strategy={strategy!r}", DeprecationWarning, stacklevel=2,
            )
            parts["strategy"] = strategy
        if parts.get("strategy") and not sparse:
            raise PluginError(f"method {name!r} has a mask strategy, so it must be sparse")
        for attr, value in (("name", name), ("summary", summary), ("sparse", sparse),
                            ("parts", parts), ("options", dict(options or {})),
                            ("kind", kind), ("plugin", plugin)):
            object.__setattr__(self, attr, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Method records are immutable; use Method.replace")

    def __getattr__(self, name: str) -> Any:
        kind = SLOT_KINDS.get(name)
        if kind is None:
            raise AttributeError(name)
        return self.parts.get(name, () if kind.many else None)

    def __repr__(self) -> str:
        return f"Method({self.name!r}, parts={self.parts!r}, plugin={self.plugin!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Method) and all(
            getattr(self, a) == getattr(other, a) for a in Method.__slots__)

    def __hash__(self) -> int:
        return hash((self.name, self.plugin))

    def __reduce__(self) -> tuple[Any, ...]:  # immutable: rebuild through __init__
        return (_method, ({a: getattr(self, a) for a in Method.__slots__},))

    def replace(self, **changes: Any) -> Method:
        """A copy with record fields or slots changed."""
        fields = {a: getattr(self, a) for a in Method.__slots__}
        parts = dict(fields.pop("parts"))
        for key in list(changes):
            if key in SLOT_KINDS:
                parts[key] = changes.pop(key)
        fields.update(changes)
        return Method(**fields, parts={k: v for k, v in parts.items() if v})

    def strategy_name(self) -> str | None:
        """The strategy this recipe runs with (the default for a sparse method naming none)."""
        if not self.sparse:
            return None
        return self.parts.get("strategy") or SLOT_KINDS["strategy"].default

    def slots(self) -> dict[str, Any]:
        """Slot name -> component name(s), for tracking and results."""
        out: dict[str, Any] = {}
        for slot, kind in SLOT_KINDS.items():
            value = self.parts.get(slot)
            out[slot] = list(value or ()) if kind.many else value
        out["strategy"] = self.strategy_name()
        return out

    def components(self) -> list[str]:
        """Every component name the recipe uses, in slot order."""
        names: list[str] = []
        for slot, kind in SLOT_KINDS.items():
            value = self.strategy_name() if slot == "strategy" else self.parts.get(slot)
            if value:
                names += list(value) if kind.many else [value]
        return names


def _method(fields: dict[str, Any]) -> Method:
    return Method(**fields)


Record = Component | Method


class Registry:
    """Every registered record by name, one namespace across kinds.

    A duplicate name is an error naming both plugins; with ``strict=False`` (for listing what is
    installed) the first record is kept and the clash is recorded in ``conflicts``.
    """

    def __init__(self, strict: bool = True) -> None:
        self._records: dict[str, Record] = {}
        self.strict = strict
        self.conflicts: list[dict[str, Any]] = []  # {"name", "plugins", "message"}

    def add(self, record: Record) -> None:
        if not isinstance(record, (Component, Method)) or not record.name:
            raise PluginError(
                f"plugin {getattr(record, 'plugin', '?')!r} registered {record!r}; expected a "
                "named fedprune.Component or fedprune.Method"
            )
        if "+" in record.name or "," in record.name:
            raise PluginError(
                f"plugin {record.plugin!r} registered {record.name!r}: names cannot contain "
                "'+' or ','"
            )
        old = self._records.get(record.name)
        if old is not None:
            message = (
                f"{record.name!r} is registered twice: as a {old.kind} by plugin {old.plugin!r} "
                f"and as a {record.kind} by plugin {record.plugin!r}; uninstall one, or disable "
                f"it with FEDPRUNE_DISABLE_PLUGINS={record.plugin}"
            )
            if self.strict:
                raise PluginError(message)
            self.conflicts.append({"name": record.name, "plugins": [old.plugin, record.plugin],
                                   "message": message})
            return
        self._records[record.name] = record

    def names(self, kind: str | None = None) -> list[str]:
        return sorted(n for n, r in self._records.items() if kind is None or r.kind == kind)

    def records(self, kind: str | None = None) -> list[Record]:
        return [self._records[n] for n in self.names(kind)]

    def find(self, name: str) -> Record | None:
        """The record called ``name``, of any kind."""
        return self._records.get(name)

    def get(self, name: str, kind: str) -> Any:
        record = self._records.get(name)
        if record is None or record.kind != kind:
            raise FedpruneError(_unknown(name, kind, self.names(kind), found=record))
        return record

    def method(self, spec: str) -> Method:
        """Resolve ``"base+comp+comp"``: each component goes into the slot its kind names."""
        base, *extras = [part.strip() for part in spec.split("+")]
        method: Method = self.get(base, "method")
        for name in extras:
            record = self._records.get(name)
            kind = KIND_BY_NAME.get(record.kind) if record is not None else None
            if record is None or kind is None or kind.slot is None:
                mixable = [n for k in MIXABLE_KINDS for n in self.names(k)]
                raise FedpruneError(_unknown(name, "mixable component", mixable, spec, record))
            if not method.sparse and kind.name in _MASK_KINDS:
                raise FedpruneError(
                    f"{spec!r}: {base!r} is dense (it has no masks), so the {kind.name} "
                    f"{name!r} would do nothing; put it into a sparse method, e.g. feddst+{name}"
                )
            slot = kind.slot
            if kind.many:
                value: Any = tuple(n for n in method.parts.get(slot, ()) if n != name) + (name,)
            else:
                value = name
            method = method.replace(name=spec, **{slot: value})
        for name in method.components():
            if name not in self._records:
                raise FedpruneError(
                    f"method {method.name!r} (plugin {method.plugin!r}) uses {name!r}, which no "
                    "installed plugin registers; install the plugin that provides it"
                )
        return method


#: Kinds that only act on masks: meaningless in a dense method.
_MASK_KINDS = ("pruning_criterion", "growth_criterion", "schedule", "mask_policy", "strategy")


def _unknown(
    name: str, kind: str, available: Iterable[str], spec: str | None = None,
    found: Record | None = None,
) -> str:
    available = list(available)
    where = f" in {spec!r}" if spec else ""
    if found is not None:
        hint = (" A+B puts component B into a slot of method A; to compare two methods, list "
                "them: --methods A,B." if found.kind == "method" and spec else "")
        return (
            f"{name!r}{where} is a {found.kind}, not a {kind}.{hint} Available {kind}s: "
            f"{', '.join(available) or 'none'} (see `fedprune plugins`)"
        )
    hint_names = difflib.get_close_matches(name, available, n=1)
    maybe = f" Did you mean {hint_names[0]!r}?" if hint_names else ""
    return (
        f"unknown {kind} {name!r}{where}.{maybe} Available: {', '.join(available) or 'none'} "
        "(see `fedprune plugins`)"
    )
