"""The plugin contract: every hook fedprune calls, with what it is for and an example.

Two kinds of hooks:

* **Registration hooks** (``fedprune_methods``, ``fedprune_pruning_criteria``, ...) return an
  iterable of `fedprune.Component` or `fedprune.Method` records. There is one per entry of
  `fedprune.registry.KINDS`, generated from it; a component's interface is its kind's base class
  in `fedprune.contracts`. The host collects them once, refuses duplicate names (naming both
  plugins) and resolves names by lookup. They take no arguments and must not have side effects.
* **Lifecycle hooks** (``fedprune_bench_start`` ... ``fedprune_bench_end``) are observers: the
  MLflow tracker and the progress display are plugins of them. Their return values are ignored
  and nothing that changes results may depend on them or on their call order. An observer that
  raises is reported with its plugin's name; the run and its results go on.

Objects passed to lifecycle hooks are described in `fedprune.engine.events`.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from fedprune.registry import KINDS, Component, Kind, Method

if TYPE_CHECKING:
    from torch import Tensor

    from fedprune.engine.events import BenchInfo, ClientReport, RunInfo

hookspec = pluggy.HookspecMarker("fedprune")


# --------------------------------------------------------------------------- registration hooks


def _registration_doc(kind: Kind) -> str:
    parts = [f"Register {kind.summary}."]
    if kind.contract is not None:
        contract = inspect.getdoc(kind.contract) or ""
        parts.append(
            f"Each record's factory builds a ``fedprune.{kind.contract.__name__}``: "
            + contract[0].lower() + contract[1:]
        )
    parts.append("Example::\n\n" + textwrap.indent(kind.example, "    "))
    return "\n\n".join(parts)


def _registration_hook(kind: Kind) -> Callable[[], Iterable[Component | Method]]:
    def spec() -> Iterable[Component | Method]:
        return ()

    spec.__name__ = spec.__qualname__ = f"fedprune_{kind.hook}"
    spec.__doc__ = _registration_doc(kind)
    return hookspec(spec)


REGISTRATION_HOOKS: dict[str, Kind] = {f"fedprune_{kind.hook}": kind for kind in KINDS}
for _name, _kind in REGISTRATION_HOOKS.items():
    globals()[_name] = _registration_hook(_kind)


# ------------------------------------------------------------------------------ lifecycle hooks


@hookspec
def fedprune_bench_start(bench: BenchInfo) -> None:
    """A bench begins. ``bench`` is a `fedprune.engine.events.BenchInfo`.

    Example::

        @fedprune.hookimpl
        def fedprune_bench_start(bench):
            print("comparing", ", ".join(bench.methods))
    """


@hookspec
def fedprune_run_start(run: RunInfo) -> None:
    """One (method, grid point, seed) run begins. ``run`` is a `fedprune.engine.events.RunInfo`
    (``run.resumed_from`` is the round a resumed run continues after, else 0).

    Example::

        @fedprune.hookimpl
        def fedprune_run_start(run):
            print(run.method, run.seed, run.config.rounds)
    """


@hookspec
def fedprune_client_trained(run: RunInfo, round: int, client: ClientReport) -> None:
    """A sampled client finished local training. ``client`` is a
    `fedprune.engine.events.ClientReport` (id, samples, loss, bytes up and down, metrics).

    Example::

        @fedprune.hookimpl
        def fedprune_client_trained(run, round, client):
            losses.append(client.loss)
    """


@hookspec
def fedprune_masks_updated(run: RunInfo, round: int, masks: Mapping[str, Tensor]) -> None:
    """The global masks changed in ``round`` (``masks``: name -> bool tensor; read only).

    Example::

        @fedprune.hookimpl
        def fedprune_masks_updated(run, round, masks):
            print(round, sum(int(m.sum()) for m in masks.values()))
    """


@hookspec
def fedprune_round_end(run: RunInfo, round: int, metrics: Mapping[str, float]) -> None:
    """A round finished. ``metrics`` maps names to floats: always ``train_loss``, ``lr``,
    ``round_upload_bytes``, ``round_download_bytes`` and ``density``; ``accuracy`` and
    ``loss`` in evaluated rounds; ``pruned``, ``grown`` and the regularizer's client metrics
    (e.g. ``bae_norm_ratio``) in adjustment rounds.

    Example::

        @fedprune.hookimpl
        def fedprune_round_end(run, round, metrics):
            if "accuracy" in metrics:
                print(round, metrics["accuracy"])
    """


@hookspec
def fedprune_run_end(run: RunInfo, result: dict[str, Any]) -> None:
    """A run ended. ``result`` is the run's results.json object; ``result["status"]`` is
    ``"ok"``, ``"failed"``, ``"diverged"`` or ``"interrupted"``.

    Example::

        @fedprune.hookimpl
        def fedprune_run_end(run, result):
            print(run.method, result["status"], result.get("final_accuracy"))
    """


@hookspec
def fedprune_bench_end(bench: BenchInfo, results: list[dict[str, Any]]) -> None:
    """A bench ended (also when interrupted); ``results`` is the list written to results.json.

    Example::

        @fedprune.hookimpl
        def fedprune_bench_end(bench, results):
            print(sum(r["status"] == "ok" for r in results), "runs succeeded")
    """
