"""Objects handed to lifecycle hooks (read-only by contract), and the typed dispatcher that
calls the observers.

`Observers` calls each plugin's implementation on its own: an observer that raises is reported
once, with its plugin's name, and is not called again in that bench; the run and its results go
on. Nothing that changes a result depends on an observer.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedprune.engine.config import RunConfig

if TYPE_CHECKING:
    import pluggy
    from torch import Tensor


class ObserverWarning(UserWarning):
    """A lifecycle plugin raised; it is skipped from then on."""


@dataclass(frozen=True)
class BenchInfo:
    """A bench: the methods, grid points and seeds it compares under one configuration."""

    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    config: RunConfig
    output_dir: str
    grid: tuple[RunConfig, ...] = ()
    experiment: str = "fedprune"
    provenance: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""  # stable across resumes (bench.json)
    resumed: bool = False


@dataclass(frozen=True)
class RunInfo:
    """One (method, grid point, seed) run. ``resumed_from``: last round done before a resume."""

    method: str
    seed: int
    config: RunConfig
    components: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    resumed_from: int = 0

    @property
    def run_name(self) -> str:
        """``fedmef d=0.1 seed=0`` (plus the swept options of its grid point, if any)."""
        return self.key or f"{self.method} d={self.config.density:g} seed={self.seed}"


@dataclass(frozen=True)
class ClientReport:
    """A client's round, for observers."""

    client: int
    samples: int
    steps: int
    loss: float
    upload_bytes: int
    download_bytes: int
    metrics: Mapping[str, float] = field(default_factory=dict)


class Observers:
    """Typed calls of the lifecycle hooks, one plugin at a time (see the module docstring)."""

    def __init__(self, hook: pluggy.HookRelay | None) -> None:
        self.hook = hook
        self.broken: set[str] = set()

    def _call(self, name: str, **kwargs: Any) -> None:
        if self.hook is None:
            return
        caller = getattr(self.hook, name)
        for impl in reversed(caller.get_hookimpls()):
            if impl.plugin_name in self.broken:
                continue
            try:
                impl.function(*(kwargs[arg] for arg in impl.argnames))
            except Exception as exc:
                self.broken.add(impl.plugin_name)
                warnings.warn(
                    f"plugin {impl.plugin_name!r} failed in {name} and is skipped for the rest "
                    f"of this bench: {type(exc).__name__}: {exc}; results are not affected",
                    ObserverWarning,
                    stacklevel=3,
                )

    def bench_start(self, bench: BenchInfo) -> None:
        self._call("fedprune_bench_start", bench=bench)

    def run_start(self, run: RunInfo) -> None:
        self._call("fedprune_run_start", run=run)

    def client_trained(self, run: RunInfo, round: int, client: ClientReport) -> None:
        self._call("fedprune_client_trained", run=run, round=round, client=client)

    def masks_updated(self, run: RunInfo, round: int, masks: Mapping[str, Tensor]) -> None:
        self._call("fedprune_masks_updated", run=run, round=round, masks=masks)

    def round_end(self, run: RunInfo, round: int, metrics: Mapping[str, float]) -> None:
        self._call("fedprune_round_end", run=run, round=round, metrics=metrics)

    def run_end(self, run: RunInfo, result: dict[str, Any]) -> None:
        self._call("fedprune_run_end", run=run, result=result)

    def bench_end(self, bench: BenchInfo, results: list[dict[str, Any]]) -> None:
        self._call("fedprune_bench_end", bench=bench, results=results)
