"""What a round of each built-in method costs, as a ratio to a FedAvg round in the same process.

Every method is prepared by the bench's own pipeline (`fedprune.engine.prepare`) on one shared
federation per model (same split, base weights, clients per round) and runs whole rounds of the
engine (`Simulation.play`: local training of the sampled clients, aggregation, the strategy's
masks, evaluation on the test set, metrics). Rounds are interleaved: round r of every method, in an
order rotated each round, before round r + 1 of any. Time is this process's CPU time
(``time.process_time``; on a shared machine wall time also counts other processes), one thread.

Round 1 warms up, untimed. The adjustment schedule is the methods' own, every ``--interval``
rounds, so ``--rounds 10`` times nine normal rounds (2-9, 11) and one adjustment round (10):
the densest part of the FedMef line's schedule (after half the rounds, no round adjusts).
``ratio_to_fedavg`` is the method's total time over FedAvg's; ``normal_ratio`` and
``adjust_ratio`` split it.

Models: the digits CNN on the embedded digits (batch 32, the bench's default) and the 3-stage
CIFAR ResNet (``cifar_resnet``, the FedMef authors' library's "resnet18") on synthetic 32x32
images; 10 clients, 2 per round, 1 local epoch, density 0.1, batch 64 and lr 0.1 on the ResNet.

Run: ``python benchmarks/method_cost.py`` (about 5 minutes on 2 cores); ``--json`` prints a list
of objects with ``model``, ``method`` and ``ratio_to_fedavg`` (and the split).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

import torch

from fedprune.bench import resolve_methods
from fedprune.data.digits import load_digits
from fedprune.data.synthetic import load_synthetic
from fedprune.engine.config import RunConfig
from fedprune.engine.prepare import make_federation, prepare
from fedprune.engine.simulation import Simulation
from fedprune.plugins import get_plugin_manager

METHODS = ("fedavg", "prunefl", "feddst", "fedtiny", "fedrts", "fedmef")
MODELS = ("cnn", "cifar_resnet")
TARGET = {"fedmef": 1.3}


def setting(model: str, args: argparse.Namespace) -> tuple[RunConfig, Any]:
    """The run configuration and data of ``model``'s measurement."""
    # Round 1 warms up (torch's lazy imports, allocator), rounds 2..R+1 are timed, one more
    # round follows (the last round never adjusts), and the cosine's stop lies well after the
    # timed rounds, so round ``interval`` adjusts a sizeable fraction as early rounds do.
    options = {"cosine.interval": args.interval, "cosine.stop": 2 * args.rounds}
    common = dict(model=model, rounds=args.rounds + 2, clients=10, clients_per_round=2,
                  density=args.density, eval_every=1, options=options)
    if model == "cnn":
        return RunConfig(**common), load_digits()
    data = load_synthetic("3,32,32", 10, size=args.train_size, test_size=args.train_size // 5)
    return RunConfig(batch_size=64, lr=0.1, **common), data


def measure(model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    pm = get_plugin_manager()
    config, data = setting(model, args)
    methods = resolve_methods(pm, args.methods.split(","), [config])
    federation = make_federation(pm.registry, config, args.seed, data)
    sims = [Simulation(prepare(pm.registry, m, dataclasses.replace(federation, config=config)))
            for m in methods]
    names = [m.name for m in methods]
    normal: dict[str, float] = dict.fromkeys(names, 0.0)
    adjust: dict[str, float] = dict.fromkeys(names, 0.0)
    for round_ in range(1, args.rounds + 2):
        seconds, adjusted = {}, False
        for i in range(len(sims)):
            sim = sims[(round_ + i) % len(sims)]
            clients = sim.prepared.sample_clients(round_)
            adjustments = len(sim.adjustments)
            start = time.process_time()
            sim.play(round_, clients)
            seconds[sim.info.method] = time.process_time() - start
            adjusted |= len(sim.adjustments) > adjustments
        for name, elapsed in seconds.items():  # a round any method adjusts in
            if round_ > 1:
                (adjust if adjusted else normal)[name] += elapsed
    base = "fedavg"
    total = {n: normal[n] + adjust[n] for n in names}
    rows = []
    for n in names:
        rows.append({
            "model": model, "method": n, "ratio_to_fedavg": total[n] / total[base],
            "normal_ratio": normal[n] / normal[base],
            "adjust_ratio": adjust[n] / adjust[base] if adjust[base] else None,
            "seconds_per_round": total[n] / args.rounds,
        })
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| model | method | ratio to FedAvg | normal rounds | adjustment rounds | "
             "CPU s per round | target |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        adjust = f"{r['adjust_ratio']:.2f}" if r["adjust_ratio"] is not None else "-"
        target = TARGET.get(r["method"])
        verdict = ("" if target is None else
                   f"<= {target} {'met' if r['ratio_to_fedavg'] <= target else 'MISSED'}")
        lines.append(f"| {r['model']} | {r['method']} | {r['ratio_to_fedavg']:.2f} | "
                     f"{r['normal_ratio']:.2f} | {adjust} | {r['seconds_per_round']:.2f} | "
                     f"{verdict} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated method specs; fedavg must be among them")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds per method")
    p.add_argument("--interval", type=int, default=10, help="rounds between adjustments")
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--train-size", type=int, default=2000,
                   help="synthetic training images of the ResNet setting")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args(argv)
    if "fedavg" not in args.methods.split(","):
        p.error("--methods must include fedavg, the reference of every ratio")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [row for model in args.models.split(",") for row in measure(model, args)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} interleaved rounds "
          f"(adjusting every {args.interval}), density {args.density}, CPU time\n")
    print(table(rows))


if __name__ == "__main__":
    main()
