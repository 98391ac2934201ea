"""A bench in Flower's simulation engine: the server in this process, clients on Ray actors.

One Flower simulation runs the whole bench: its ServerApp calls `fedprune.bench.run_bench`
with `FlowerClients` (`server.bench_on_grid`), one SuperNode per client, ``workers`` actors
sharing this machine's CPUs (and GPUs). Results equal the in-process engine's for the same seed
when clients use the same torch thread count (``threads``, default: each actor's CPU share).

Ray opens ports for its own processes; where the network must not see them, run inside a
private network namespace (``unshare -n``, see docs/distributed.md). Flower's telemetry and
update check are off, ``FLWR_HOME`` and Ray's directory are temporary unless set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedprune.bench import BENCH_FILE, BenchPlan, Output
from fedprune.errors import FedpruneError, UsageError
from fedprune.plugins import PluginManager

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


@contextlib.contextmanager
def _environment() -> Iterator[str]:
    """Flower and Ray quiet, ``FLWR_HOME`` temporary unless set; yields Ray's directory."""
    ray_dir = tempfile.mkdtemp(prefix="fpray")
    home = None if os.environ.get("FLWR_HOME") else tempfile.mkdtemp(prefix="fpflwr")
    changes = {**QUIET_ENV, **({"FLWR_HOME": home} if home else {})}
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield ray_dir
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for path in (ray_dir, home):
            if path:
                shutil.rmtree(path, ignore_errors=True)


def run_bench(
    pm: PluginManager,
    plan: BenchPlan | None,
    output_dir: Path,
    *,
    workers: int = 1,
    resume: bool = False,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
    report: bool = False,
    threads: int = 0,
    window: int = 0,
    gpus_per_worker: float = 0.0,
) -> list[dict[str, Any]]:
    """`fedprune.bench.run_bench` with clients on ``workers`` Ray actors; the same results.

    ``threads``: torch threads per actor (0: its CPU share). ``window``: messages out at once
    (0: ``workers``). ``gpus_per_worker``: a GPU share per actor (e.g. 0.25: four per GPU).
    Also writes ``OUT/flower.json`` (`server.bench_on_grid`).
    """
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedprune.flower.client import client_app
    from fedprune.flower.server import bench_on_grid, handshake

    if workers < 1:
        raise UsageError("workers must be at least 1")
    known = plan
    if resume:
        known = BenchPlan.from_json(Output(output_dir).read_json(BENCH_FILE)["plan"])
    if known is None:
        raise UsageError("no bench plan given")
    num_nodes = max(config.clients for config in known.grid)  # a node per client
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(1, (cpus or 1) // workers)
    stop = threading.Event()
    outcome: dict[str, Any] = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Any) -> None:
        outcome["thread"] = threading.current_thread()
        try:
            nodes = handshake(grid, num_nodes)
            outcome["results"] = bench_on_grid(
                grid, nodes, pm, plan, output_dir, window=window or workers,
                threads=threads or share, stop=stop, resume=resume, overwrite=overwrite,
                provenance={**(provenance or {}), "engine": f"flower-simulation/{workers}"},
                report=report)
        except KeyboardInterrupt as exc:  # the bench recorded the run in flight
            outcome["interrupted"] = exc

    with _environment() as ray_dir:
        backend: dict[str, dict[str, Any]] = {
            "client_resources": {"num_cpus": share, "num_gpus": gpus_per_worker},
            "init_args": {"num_cpus": share * workers, "include_dashboard": False,
                          "logging_level": "ERROR", "log_to_driver": False,
                          "_temp_dir": ray_dir},
        }
        if gpus_per_worker:
            import torch

            backend["init_args"]["num_gpus"] = torch.cuda.device_count()
        try:
            run_simulation(server_app=app, client_app=client_app, num_supernodes=num_nodes,
                           backend_config=backend)
        except KeyboardInterrupt:
            stop.set()
            thread = outcome.get("thread")
            if thread is not None:
                thread.join(60)
            raise outcome.get("interrupted") or KeyboardInterrupt() from None
    if "interrupted" in outcome:
        raise outcome["interrupted"]
    if "results" not in outcome:
        raise FedpruneError("the Flower simulation ended without results (see its log above)")
    return outcome["results"]
