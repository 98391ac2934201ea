"""A run's configuration: everything that, with the method and seed, determines its result.

Each `RunConfig` field is declared once, with its default, its command-line help and its bounds
in the field's metadata (`setting`). The ``fedprune bench`` options, the preset keys and the
``config`` object of every results.json record are all generated from these declarations.
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedprune.errors import FedpruneError
from fedprune.options import as_bool, as_number

LR_SCHEDULES = ("constant", "exp", "cosine")


def setting(
    default: Any, help: str, *, low: float | None = None, high: float | None = None,
    low_open: bool = False, sweep: bool = False, cli: bool = True, choices: tuple = (),
) -> Any:
    """A `RunConfig` field with what the command line and presets need to know about it.

    ``low``/``high`` bound numbers (``low_open``: the low bound excluded); ``sweep``: the
    command line accepts comma-separated values, one grid point each; ``cli=False``: not a
    ``bench`` option (set by other means).
    """
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "sweep": sweep,
            "cli": cli, "choices": choices}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    """Settings shared by every method in a bench; defaults suit the embedded digits dataset.

    ``options`` holds component options as ``{"component.option": value}`` (``-o`` on the
    command line); a key without a dot is a method setting (see `MethodSettings`).
    """

    dataset: str = setting("digits", "Dataset name (see `fedprune plugins`).")
    model: str = setting("cnn", "Model name.")
    data_root: str | None = setting(
        None, "Where datasets live [default: $FEDPRUNE_DATA or ~/.cache/fedprune/data].")
    rounds: int = setting(40, "Communication rounds R.", low=1)
    clients: int = setting(10, "Number of clients N.", low=1)
    clients_per_round: int = setting(
        5, "Clients K sampled per round, without replacement.", low=1)
    local_epochs: int = setting(1, "Local epochs E per round.", low=1)
    local_steps: int | None = setting(
        None, "A fixed number of local steps instead of epochs.", low=1)
    batch_size: int = setting(32, "Local mini-batch size.", low=1)
    lr: float = setting(0.05, "Initial local learning rate eta_0.", low=0, low_open=True)
    lr_schedule: str = setting(
        "constant", "Round-level learning-rate schedule: constant, exp (exponential decay to "
        "--lr-min at the last round) or cosine (to --lr-min).", choices=LR_SCHEDULES)
    lr_min: float = setting(0.0, "Final learning rate of the exp and cosine schedules.", low=0)
    momentum: float = setting(0.9, "SGD momentum.", low=0, high=1)
    weight_decay: float = setting(0.0, "SGD weight decay.", low=0)
    density: float = setting(
        0.2, "Target density of sparse methods, in (0, 1]; a comma-separated list sweeps.",
        low=0, high=1, low_open=True, sweep=True)
    partition: str = setting("dirichlet", "Partitioner: dirichlet or iid.")
    dirichlet_alpha: float = setting(
        0.5, "Dirichlet label-skew concentration (smaller: more skew).", low=0, low_open=True)
    eval_every: int = setting(5, "Evaluate the global model every this many rounds.", low=1)
    eval_batch_size: int = setting(512, "Batch size of evaluation.", low=1, cli=False)
    device: str = setting("cpu", "torch device, e.g. cuda.")
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if _numeric(f) and value is not None:
                _check_number(f, value)
            elif f.metadata.get("choices") and value not in f.metadata["choices"]:
                raise FedpruneError(
                    f"{cli_name(f.name)} must be one of {', '.join(f.metadata['choices'])}, "
                    f"not {value!r}"
                )
        if self.clients_per_round > self.clients:
            raise FedpruneError(
                f"clients-per-round ({self.clients_per_round}) cannot exceed clients "
                f"({self.clients}): clients are sampled without replacement"
            )
        if self.lr_min > self.lr:
            raise FedpruneError(f"lr-min ({self.lr_min}) cannot exceed lr ({self.lr})")

    def record(self) -> dict[str, Any]:
        """The ``config`` object of a results.json record: every field, options as a dict."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["options"] = dict(sorted(self.options.items()))
        return out

    def component_options(self, component: str) -> dict[str, Any]:
        """Options addressed to ``component`` (keys ``component.option``)."""
        prefix = component + "."
        return {k[len(prefix):]: v for k, v in self.options.items() if k.startswith(prefix)}

    def learning_rate(self, round: int) -> float:
        """eta_t of ``round`` (1-based) under the run's schedule; eta_1 = ``lr``."""
        if self.lr_schedule == "constant" or self.rounds == 1:
            return self.lr
        t = (round - 1) / (self.rounds - 1)
        if self.lr_schedule == "exp":
            floor = self.lr_min if self.lr_min > 0 else self.lr * 1e-3
            return self.lr * (floor / self.lr) ** t
        return self.lr_min + (self.lr - self.lr_min) * 0.5 * (1 + math.cos(math.pi * t))


def cli_name(name: str) -> str:
    return name.replace("_", "-")


def _numeric(f: dataclasses.Field) -> bool:
    return str(f.type).split(" ")[0] in ("int", "float")


def _check_number(f: dataclasses.Field, value: Any) -> None:
    name = cli_name(f.name)
    integer = str(f.type).startswith("int")
    number = as_number(value, name, integer=integer)
    low, high = f.metadata.get("low"), f.metadata.get("high")
    if low is not None and (number < low or (f.metadata.get("low_open") and number == low)):
        bound = f"greater than {low}" if f.metadata.get("low_open") else f"at least {low}"
        raise FedpruneError(f"{name} must be {bound}, got {value}")
    if high is not None and number > high:
        raise FedpruneError(f"{name} must be at most {high}, got {value}")


def config_fields() -> list[dataclasses.Field]:
    """The `RunConfig` fields that are ``bench`` options and preset keys."""
    return [f for f in dataclasses.fields(RunConfig) if f.name != "options" and f.metadata["cli"]]


@dataclass(frozen=True)
class MethodSettings:
    """A method's own settings: how its masks are made and aggregated.

    distribution: layer-wise densities, ``erk`` or ``uniform``.
    init: initial mask, ``random`` positions or ``magnitude`` of the initial weights.
    min_votes: a position survives server aggregation when the sample-weighted share of clients
      holding it exceeds this (0: the union of client masks).
    prune_classifier: prune the last linear layer too.
    regrow_pruned: growth may pick positions pruned in the same adjustment (RigL); by default
      growth candidates are the positions inactive before pruning.
    """

    distribution: str = "erk"
    init: str = "random"
    min_votes: float = 0.0
    prune_classifier: bool = False
    regrow_pruned: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MethodSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise FedpruneError(
                f"unknown method setting {', '.join(unknown)}; settings are "
                f"{', '.join(sorted(names))}, component options are written component.option"
            )
        values = dict(options)
        for flag in ("prune_classifier", "regrow_pruned"):
            if flag in values:
                values[flag] = as_bool(values[flag], flag)
        if "min_votes" in values:
            values["min_votes"] = as_number(values["min_votes"], "min_votes")
        settings = cls(**values)
        if settings.distribution not in ("erk", "uniform"):
            raise FedpruneError(
                f"distribution must be erk or uniform, not {settings.distribution!r}"
            )
        if settings.init not in ("random", "magnitude"):
            raise FedpruneError(f"init must be random or magnitude, not {settings.init!r}")
        if not 0 <= settings.min_votes < 1:
            raise FedpruneError(f"min_votes must be in [0, 1), got {settings.min_votes}")
        return settings
