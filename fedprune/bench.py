"""A bench: several methods and seeds on the same data, partition and initial weights.

Per seed the dataset split over clients and the base model are made once and shared by every
method. Before training, each method's client memory is measured on one training step of its
model (`Simulation.measure_memory`). Each (method, seed) run is isolated: a failure is recorded
(``"status": "failed"`` with the error) and the next run goes on; results.json is rewritten
after every run, so nothing finished is lost if the process dies.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

from fedprune.engine.build import (
    build_base_model,
    build_parts,
    initial_masks,
    method_model,
)
from fedprune.engine.config import RunConfig
from fedprune.engine.events import BenchInfo, RunInfo
from fedprune.engine.simulation import Simulation
from fedprune.errors import FedpruneError
from fedprune.plugins import PluginManager
from fedprune.registry import Method
from fedprune.seeding import numpy_generator

RESULTS_FILE = "results.json"
DENSITY_BASIS = (
    "non-zero fraction of the prunable weights of the final global model: conv and linear "
    "weights, the classifier only with prune_classifier"
)


def resolve_methods(pm: PluginManager, specs: list[str], config: RunConfig) -> list[Method]:
    """Resolve every spec and check every option before anything runs."""
    registry = pm.registry
    methods = [registry.method(spec) for spec in specs]
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
        if option not in record.options():
            raise FedpruneError(
                f"{record.kind} {component!r} has no option {option}; its options are: "
                f"{', '.join(record.options()) or 'none'}"
            )
    for method in methods:
        build_parts(registry, method, config)  # validates option names and values early
    return methods


def run_bench(
    pm: PluginManager,
    specs: list[str],
    config: RunConfig,
    seeds: list[int],
    output_dir: Path,
) -> list[dict[str, Any]]:
    """Run every (method, seed); return the results.json list (also written to ``output_dir``)."""
    methods = resolve_methods(pm, specs, config)
    registry = pm.registry
    output_dir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    bench = BenchInfo(tuple(specs), tuple(seeds), config, str(output_dir))
    pm.hook.fedprune_bench_start(bench=bench)
    try:
        data = registry.get(config.dataset, "dataset").build(
            root=config.data_root, **config.component_options(config.dataset)
        )
        partitioner = _partitioner(registry, config)
        for seed in seeds:
            clients = partitioner.split(
                data.train.targets, config.clients, numpy_generator(seed, "partition")
            )
            base = build_base_model(registry, config, data.num_classes, data.input_shape, seed)
            for method in methods:
                results.append(_run_one(pm, method, config, data, clients, base, seed))
                write_results(output_dir, results)
    finally:
        write_results(output_dir, results)
        pm.hook.fedprune_bench_end(bench=bench, results=results)
    return results


def _partitioner(registry, config: RunConfig):
    options = config.component_options(config.partition)
    if config.partition == "dirichlet":
        options.setdefault("alpha", config.dirichlet_alpha)
    return registry.get(config.partition, "partitioner").build(**options)


def _run_one(pm, method, config, data, clients, base, seed) -> dict[str, Any]:
    run = RunInfo(method.name, seed, config, method.slots())
    record: dict[str, Any] = {"method": method.name, "seed": seed}
    start = time.perf_counter()
    pm.hook.fedprune_run_start(run=run)
    try:
        parts = build_parts(pm.registry, method, config)
        model = method_model(base, parts)
        masks = initial_masks(model, parts, config.density, seed)
        sim = Simulation(parts, config, data, clients, model, masks, seed, pm.hook, run)
        record["memory"] = sim.measure_memory()
        record.update(sim.run())
        record["density_basis"] = DENSITY_BASIS
    except Exception as exc:  # one method's failure must not cost the others their results
        record.update(
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            wall_seconds=time.perf_counter() - start,
        )
    record["components"] = run.components
    record["config"] = config.as_params()
    pm.hook.fedprune_run_end(run=run, result=record)
    return record


def write_results(output_dir: Path, results: list[dict[str, Any]]) -> Path:
    """Write results.json atomically (a crash mid-write never leaves a broken file)."""
    path = output_dir / RESULTS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path
