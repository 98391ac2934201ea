"""What SAP costs per training step, and what it saves: each model with and without SAP.

Pairs (uncompressed -> with SAP): ``feddst`` -> ``feddst+sap`` (BatchNorm models) and
``feddst+nsconv`` -> ``feddst+nsconv+sap`` (FedMef's BatchNorm-free convolutions). Every client
is built by the bench's own pipeline (`fedprune.engine.prepare`: same base weights, transforms,
compressors, initial masks at ``--density``) and one step is the engine's normal-round step:
forward, cross-entropy, backward, gradient mask, SGD, weight mask.

Time: all clients of a model are stepped in one process, interleaved (every client once per
round, in rotated order, after a warm-up round), and each pair's ratio is the median over rounds
of the per-round ratio of CPU times (``time.process_time``: this process's threads while they
run; on a shared machine wall time also counts other processes). Memory: the bytes autograd
saves for backward in one step (`fedprune.memory.measure_training_step`).

SAP runs its native kernels where they build (see ``docs/activation_memory.md``);
``--fallback`` measures the pure-torch path instead. The first run on a machine compiles them
(about 10 s, before the timed rounds).

Run: ``python benchmarks/sap_step.py`` (ResNet18, MobileNetV2 and the 3-stage CIFAR ResNet, batch
64, 32x32, gamma 0.7; several minutes on 2 cores). ``--json`` prints the rows as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedprune import masks as M
from fedprune.bench import resolve_methods
from fedprune.data.synthetic import load_synthetic
from fedprune.engine.config import RunConfig
from fedprune.engine.prepare import Federation, make_federation, prepare
from fedprune.memory import measure_training_step
from fedprune.ops import native
from fedprune.plugins import PluginManager, get_plugin_manager
from fedprune_plugins.components.sap import KERNELS

MiB = 2**20
PAIRS = (("feddst", "feddst+sap"), ("feddst+nsconv", "feddst+nsconv+sap"))
MODELS = ("resnet18", "mobilenetv2", "cifar_resnet")


@dataclasses.dataclass
class Client:
    spec: str
    model: nn.Module
    masks: dict[str, Tensor] | None
    optimizer: torch.optim.Optimizer


def build(pm: PluginManager, spec: str, shared: Federation, config: RunConfig) -> Client:
    (method,) = resolve_methods(pm, [spec], [config])
    run = prepare(pm.registry, method, dataclasses.replace(shared, config=config))
    optimizer = torch.optim.SGD(run.model.parameters(), lr=config.lr, momentum=config.momentum)
    return Client(spec, run.model, run.masks, optimizer)


def step(client: Client, x: Tensor, y: Tensor) -> None:
    params = dict(client.model.named_parameters())
    client.optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(client.model(x), y).backward()
    if client.masks is not None:
        M.mask_gradients(params, client.masks)
    client.optimizer.step()
    if client.masks is not None:
        M.apply_masks(params, client.masks)


def measure(pm: PluginManager, model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per pair of ``model``: step ratio, step times and saved bytes of both sides."""
    config = RunConfig(model=model, batch_size=args.batch_size, density=args.density,
                       options={"sap.gamma": args.gamma})
    data = load_synthetic((3, args.size, args.size), 10, size=max(640, 10 * args.batch_size))
    shared = make_federation(pm.registry, config, args.seed, data)
    x, y = shared.memory_batch()
    specs = [spec for pair in PAIRS for spec in pair]
    clients = [build(pm, spec, shared, config) for spec in specs]
    saved = {c.spec: measure_training_step(c.model, x, y, c.masks, lr=config.lr,
                                           momentum=config.momentum).activation_bytes
             for c in clients}
    for c in clients:
        c.model.train()
    times: dict[str, list[float]] = {c.spec: [] for c in clients}
    for r in range(args.rounds + 1):  # round 0 warms up
        for i in range(len(clients)):
            client = clients[(r + i) % len(clients)]
            start = time.process_time()
            step(client, x, y)
            if r > 0:
                times[client.spec].append(time.process_time() - start)
    rows = []
    for base, sap in PAIRS:
        ratio = statistics.median(s / b for s, b in zip(times[sap], times[base], strict=True))
        rows.append({
            "model": model, "base": base, "sap": sap, "ratio": ratio,
            "base_ms": statistics.median(times[base]) * 1e3,
            "sap_ms": statistics.median(times[sap]) * 1e3,
            "base_saved_mib": saved[base] / MiB, "sap_saved_mib": saved[sap] / MiB,
            "path": "fallback" if args.fallback else "native",
        })
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| model | pair | step ratio | step CPU ms | saved MiB | path |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | `{r['base']}` -> `{r['sap']}` | {r['ratio']:.3f} | "
            f"{r['base_ms']:.0f} -> {r['sap_ms']:.0f} | "
            f"{r['base_saved_mib']:.2f} -> {r['sap_saved_mib']:.2f} | {r['path']} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--size", type=int, default=32, help="input H = W (3 channels)")
    p.add_argument("--gamma", type=float, default=0.7)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=9, help="timed rounds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fallback", action="store_true", help="SAP's pure-torch path, no kernels")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pm = get_plugin_manager()
    with native.disabled() if args.fallback else contextlib.nullcontext():
        if not args.fallback and not native.load(*KERNELS):
            raise SystemExit("native kernels unavailable; run with --fallback")
        rows = [row for model in args.models.split(",") for row in measure(pm, model, args)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch_size}, "
          f"{args.size}x{args.size}, gamma {args.gamma}, density {args.density}, "
          f"{args.rounds} interleaved rounds (median of per-round CPU-time ratios)\n")
    print(table(rows))


if __name__ == "__main__":
    main()
