"""A bench: several methods, grid points and seeds on the same data, partition and initial weights.

Per seed the dataset split over clients and the base model are made once and shared by every
method and grid point (`fedprune.engine.prepare.make_federation`); a grid point that changes the
model's or the partitioner's options gets its own. Each (method, grid point, seed) run is
isolated: a failure or a divergence is recorded and the next run goes on.

Nothing finished is lost:

- ``OUT/bench.json`` holds the bench's plan (so ``--resume OUT`` needs nothing else);
  ``OUT/results.json`` is rewritten atomically after every run, never by a bench that has not
  finished one, and a bench refuses an output directory that already holds results unless told
  to resume or overwrite;
- every run checkpoints atomically to ``OUT/checkpoints/`` every ``checkpoint_every`` rounds
  (global state, masks, sampling stream, strategy, mask policy and client state, history, byte
  counters); ``resume`` skips finished runs and continues the others from their checkpoint, so
  the final results equal an uninterrupted bench's (wall times aside);
- an interrupt (SIGINT, SIGTERM) records the run in flight as ``"interrupted"`` with its last
  completed round, and propagates.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedprune.contracts import Schedule
from fedprune.data.base import DatasetSplits
from fedprune.engine.client import ClientExecutor, InProcessClients, LocalTrainer
from fedprune.engine.config import RunConfig
from fedprune.engine.events import BenchInfo, Observers, RunInfo
from fedprune.engine.prepare import (
    Federation,
    make_federation,
    measure_memory,
    prepare,
)
from fedprune.engine.simulation import Simulation
from fedprune.errors import Diverged, FedpruneError, UsageError
from fedprune.options import option_label
from fedprune.plugins import PluginManager
from fedprune.registry import Method, Registry

RESULTS_FILE = "results.json"
BENCH_FILE = "bench.json"
CHECKPOINTS = "checkpoints"
DENSITY_BASIS = (
    "non-zero fraction of the prunable weights of the final global model: conv and linear "
    "weights, the classifier only with prune_classifier"
)
#: What ``--overwrite`` removes from an output directory (a previous bench's files).
BENCH_FILES = (RESULTS_FILE, BENCH_FILE, CHECKPOINTS, "mlflow.db", "mlartifacts", "report")


class Interrupted(KeyboardInterrupt):
    """The bench was asked to stop (SIGINT or SIGTERM); ``signum`` says which, ``record`` is
    the run in flight, as recorded."""

    def __init__(self, signum: int = 2) -> None:
        super().__init__(signum)
        self.signum = signum
        self.record: dict[str, Any] | None = None


# ------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class BenchPlan:
    """What a bench runs: methods x grid points x seeds, and how often runs checkpoint."""

    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    grid: tuple[RunConfig, ...]
    checkpoint_every: int = 10
    experiment: str = "fedprune"

    def __post_init__(self) -> None:
        if not self.methods:
            raise FedpruneError("no method to run")
        if not self.grid:
            raise FedpruneError("no grid point to run")
        if self.checkpoint_every < 1:
            raise FedpruneError("checkpoint-every must be at least 1")
        bad = [s for s in self.seeds if not isinstance(s, int) or s < 0]
        if bad or not self.seeds:
            raise FedpruneError(
                f"seeds must be non-negative integers, got {', '.join(map(str, bad)) or 'none'}"
            )
        for what, values in (("method", self.methods), ("seed", self.seeds),
                             ("grid point", [c.record()["density"] for c in self.grid]
                              if len({json.dumps(c.record(), sort_keys=True, default=str)
                                      for c in self.grid}) < len(self.grid) else [])):
            twice = sorted({str(v) for v in values if list(values).count(v) > 1})
            if twice:
                raise FedpruneError(f"{what} given twice: {', '.join(twice)}")

    def runs(self) -> Iterator[tuple[int, RunConfig, str]]:
        """(seed, grid point, method) in run order: a seed's runs share its federation."""
        for seed in self.seeds:
            for config in self.grid:
                for method in self.methods:
                    yield seed, config, method

    def swept(self) -> set[str]:
        """Option keys whose value differs between grid points (they name the runs)."""
        keys = {k for config in self.grid for k in config.options}
        return {k for k in keys if len({json.dumps(c.options.get(k), sort_keys=True)
                                        for c in self.grid}) > 1}

    def to_json(self) -> dict[str, Any]:
        return {"methods": list(self.methods), "seeds": list(self.seeds),
                "grid": [c.record() for c in self.grid],
                "checkpoint_every": self.checkpoint_every, "experiment": self.experiment}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchPlan:
        fields = {f.name for f in dataclasses.fields(RunConfig)}
        grid = tuple(RunConfig(**{k: v for k, v in c.items() if k in fields})
                     for c in data["grid"])
        return cls(tuple(data["methods"]), tuple(data["seeds"]), grid,
                   int(data["checkpoint_every"]), data.get("experiment", "fedprune"))


def run_key(method: str, config: RunConfig, seed: int, swept: set[str] | None = None) -> str:
    """A run's identity in results.json, checkpoints and tracking: ``fedmef d=0.1 seed=0``,
    plus the ``swept`` options of its grid point."""
    label = option_label({k: v for k, v in config.options.items()
                          if swept is None or k in swept})
    return f"{method} d={config.density:g}{' ' + label if label else ''} seed={seed}"


# ------------------------------------------------------------------------------- the directory


class Output:
    """The output directory: results, the plan, checkpoints; every write atomic."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS_FILE

    def open(self, resume: bool, overwrite: bool) -> None:
        """Create and check the directory before any training (see the module docstring)."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"output {self.path} exists and is not a directory")
        for parent in self.path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise UsageError(f"output {self.path}: {parent} is a file, not a directory")
                break
        if resume:
            if not (self.path / BENCH_FILE).is_file():
                raise UsageError(
                    f"nothing to resume in {self.path}: it has no {BENCH_FILE} (was it written "
                    "by `fedprune bench`?)"
                )
        elif (self.path / RESULTS_FILE).exists() or (self.path / BENCH_FILE).exists():
            if not overwrite:
                raise UsageError(
                    f"{self.path} already holds a bench's results; continue it with "
                    f"`fedprune bench --resume {self.path}`, replace it with --overwrite, or "
                    "choose another --output"
                )
            for name in BENCH_FILES:
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        try:
            (self.path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise UsageError(
                f"cannot write to the output directory {self.path}: {exc.strerror or exc}; "
                "choose another --output"
            ) from None

    def _atomic(self, path: Path, write: Any) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        write(tmp)
        os.replace(tmp, path)

    def write_json(self, name: str, payload: Any) -> Path:
        path = self.path / name
        text = json.dumps(payload, indent=2, default=str) + "\n"
        self._atomic(path, lambda tmp: tmp.write_text(text))
        return path

    def read_json(self, name: str) -> Any:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise FedpruneError(f"cannot read {path}: {exc}") from None

    def checkpoint_path(self, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key)
        return self.path / CHECKPOINTS / f"{safe}.pt"

    def save_checkpoint(self, key: str, state: dict[str, Any]) -> None:
        self._atomic(self.checkpoint_path(key), lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self, key: str) -> dict[str, Any] | None:
        path = self.checkpoint_path(key)
        if not path.is_file():
            return None
        try:
            return torch.load(path, weights_only=True)
        except Exception as exc:  # a truncated file: start the run again, say so
            warnings.warn(f"checkpoint {path} is unreadable ({exc}); the run starts again",
                          stacklevel=2)
            return None


def write_results(output_dir: Path, results: list[dict[str, Any]]) -> Path:
    """Write results.json atomically (a crash mid-write never leaves a broken file)."""
    return Output(output_dir).write_json(RESULTS_FILE, results)


# ------------------------------------------------------------------------------------ the bench


def resolve_methods(pm: PluginManager, specs: Sequence[str], configs: Sequence[RunConfig]
                    ) -> list[Method]:
    """Resolve every spec and check every option of every grid point before anything runs."""
    from fedprune.engine.parts import build_parts

    registry = pm.registry
    methods = [registry.method(spec) for spec in specs]
    for config in configs:
        check_options(registry, config)
        for method in methods:
            build_parts(registry, method, config)  # validates option names and values early
    return methods


def check_options(registry: Registry, config: RunConfig) -> None:
    """The configuration's dataset, model, partitioner and every ``component.option`` exist."""
    for name, kind in ((config.dataset, "dataset"), (config.model, "model"),
                       (config.partition, "partitioner")):
        registry.get(name, kind)
    for key in config.options:
        if "." not in key:
            continue
        component, option = key.split(".", 1)
        record = registry.find(component)
        if record is None or record.kind == "method":
            raise FedpruneError(
                f"option {key!r} names no registered component; write component.option, "
                f"e.g. cosine.interval=5 (components: see `fedprune plugins`)"
            )
        options = record.options() if not isinstance(record, Method) else {}
        if option not in options:
            raise FedpruneError(
                f"{record.kind} {component!r} has no option {option}; its options are: "
                f"{', '.join(options) or 'none'}"
            )


def run_bench(
    pm: PluginManager,
    plan: BenchPlan | None,
    output_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
    report: bool = False,
    executor: Callable[[LocalTrainer], ClientExecutor] = InProcessClients,
) -> list[dict[str, Any]]:
    """Run every (method, grid point, seed) of ``plan``; return the results.json list.

    With ``resume``, the plan is read from the output directory (``plan`` may be None).
    With ``report``, a bench of several seeds or methods ends with ``OUT/report/``
    (`fedprune.report`), before observers hear of its end (so the tracker can log it).
    ``executor`` runs the clients (default: one after another in this process; the Flower
    engine passes its own).
    """
    output = Output(output_dir)
    output.open(resume, overwrite)
    bench_id = uuid.uuid4().hex
    results: list[dict[str, Any]] = []
    if resume:
        saved = output.read_json(BENCH_FILE)
        plan, bench_id = BenchPlan.from_json(saved["plan"]), saved["id"]
        if output.results_path.is_file():
            results = [r for r in output.read_json(RESULTS_FILE)
                       if r.get("status") != "interrupted"]
    if plan is None:
        raise UsageError("no bench plan given")
    try:
        methods = resolve_methods(pm, plan.methods, plan.grid)
    except UsageError:
        raise
    except FedpruneError as exc:
        raise UsageError(str(exc)) from None
    provenance = {**(provenance or {}), "device": plan.grid[0].device}
    output.write_json(BENCH_FILE, {"id": bench_id, "plan": plan.to_json(),
                                   "provenance": provenance})
    registry = pm.registry
    observers = Observers(pm.hook)
    bench = BenchInfo(plan.methods, plan.seeds, plan.grid[0], str(output_dir), plan.grid,
                      plan.experiment, provenance, bench_id, resume)
    done = {r["key"] for r in results if "key" in r}
    by_name = dict(zip(plan.methods, methods, strict=True))
    swept = plan.swept()
    observers.bench_start(bench)
    try:
        data: DatasetSplits | None = None
        federations: dict[tuple, Federation] = {}
        for seed, config, name in plan.runs():
            if not by_name[name].sparse:  # a dense method is the same run at every density
                config = dataclasses.replace(config, density=1.0)
            key = run_key(name, config, seed, swept)
            if key in done:
                continue
            done.add(key)
            if data is None:
                data = registry.get(config.dataset, "dataset").build(
                    root=config.data_root, **config.component_options(config.dataset))
            fed_key = (seed, _shared_options(config))
            if fed_key not in federations:
                federations = {fed_key: make_federation(registry, config, seed, data)}
            federation = dataclasses.replace(federations[fed_key], config=config)
            record = _run_one(registry, by_name[name], federation, key, observers,
                              output, plan.checkpoint_every, provenance, executor)
            results.append(record)
            output.write_json(RESULTS_FILE, results)
        if report and (len(plan.methods) > 1 or len(plan.seeds) > 1):
            write_report(output_dir, results)
    except KeyboardInterrupt as exc:
        stop = exc if isinstance(exc, Interrupted) else Interrupted()
        if stop.record is not None:
            results.append(stop.record)
        if results:
            output.write_json(RESULTS_FILE, results)
        raise stop from None
    finally:
        observers.bench_end(bench, results)
    return results


def write_report(output_dir: Path, results: list[dict[str, Any]]) -> Path | None:
    """``OUT/report/`` (tables and figures); a report that fails costs no result."""
    from fedprune import report

    ok = [r for r in results if r.get("status") == "ok"]
    if not ok:
        return None
    baseline = "feddst" if any(r["method"] == "feddst" for r in ok) else None
    try:
        report.write_report(results, output_dir / "report", baseline=baseline)
    except Exception as exc:  # the results are safe in results.json whatever happens here
        warnings.warn(f"the report could not be written: {type(exc).__name__}: {exc}",
                      stacklevel=2)
        return None
    return output_dir / "report"


def _shared_options(config: RunConfig) -> tuple:
    """The options that shape a federation (model and partitioner): grid points with equal
    ones share their seed's partition and initial weights."""
    shaping = (config.model, config.partition)
    return tuple(sorted((k, json.dumps(v)) for k, v in config.options.items()
                        if k.split(".", 1)[0] in shaping))


def _run_one(
    registry: Registry, method: Method, federation: Federation, key: str,
    observers: Observers, output: Output, every: int, provenance: dict[str, Any],
    executor: Callable[[LocalTrainer], ClientExecutor],
) -> dict[str, Any]:
    config, seed = federation.config, federation.seed
    checkpoint = output.load_checkpoint(key)
    resumed = int(checkpoint["round"]) if checkpoint else 0
    run = RunInfo(method.name, seed, config, method.slots(), key, resumed)
    record: dict[str, Any] = {"method": method.name, "seed": seed, "key": key}
    start = time.perf_counter()
    sim: Simulation | None = None
    observers.run_start(run)
    try:
        prepared = prepare(registry, method, federation, setup=checkpoint is None,
                           executor=executor)
        sim = Simulation(prepared, observers, run)
        if checkpoint is not None:
            sim.load_state_dict(checkpoint)
            record["memory"] = checkpoint["memory"]
        else:
            record["memory"] = measure_memory(prepared, federation.memory_batch()).as_dict()
        record["warnings"] = _warnings(sim)

        def after_round(s: Simulation) -> None:
            if s.round % every == 0 and s.round < config.rounds:
                output.save_checkpoint(key, {**s.state_dict(), "memory": record["memory"]})

        record.update(sim.run(after_round))
        record["density_basis"] = DENSITY_BASIS
    except KeyboardInterrupt as exc:
        record.update(status="interrupted", round=sim.round if sim else resumed,
                      wall_seconds=time.perf_counter() - start)
        _finish(record, method, config, provenance, run, observers)
        stop = exc if isinstance(exc, Interrupted) else Interrupted()
        stop.record = record
        raise stop from None
    except Diverged as exc:
        record.update(status="diverged", round=exc.round or (sim.round + 1 if sim else 0),
                      error=str(exc), wall_seconds=time.perf_counter() - start)
    except Exception as exc:  # one method's failure must not cost the others their results
        record.update(
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            wall_seconds=time.perf_counter() - start,
        )
    _finish(record, method, config, provenance, run, observers)
    path = output.checkpoint_path(key)
    if path.exists():
        path.unlink()
    return record


def _finish(record, method, config, provenance, run, observers) -> None:
    record["components"] = method.slots()
    record["config"] = config.record()
    record["provenance"] = provenance
    observers.run_end(run, record)


def _warnings(sim: Simulation) -> list[str]:
    """What makes this run's comparison weaker than it looks (also printed as warnings)."""
    run = sim.prepared
    schedule = run.parts.one(Schedule)
    out = []
    if (run.masks is not None and schedule is not None and "schedule" in sim.strategy.uses
            and not schedule.adjustment_rounds(run.config.rounds)):
        out.append(
            f"{run.parts.method.name}: no adjustment round within {run.config.rounds} rounds "
            "(its schedule adjusts later): its masks never change in this run; use more "
            "--rounds or a shorter schedule (e.g. -o cosine.interval=5)"
        )
    for text in out:
        warnings.warn(text, stacklevel=2)
    return out
