"""The in-process engine against Flower's simulation engine, K = 2 and K = 8 clients per round.

For each K, one bench (FedDST on the digits CNN, 16 clients, ``--rounds`` rounds) runs in process
and on Flower with ``--workers`` Ray actors; printed per engine: seconds per round (the round
loop's wall time, results.json), the final state's SHA-256 agreement, and for Flower the most
client replies the server held at once (``flower.json``: bounded by the window, whatever K: the
server folds replies into its streaming aggregator as they are pulled) and the driver's peak RSS
(``ru_maxrss`` of the process that runs the ServerApp and Ray's driver).

Ray opens ports on every interface unless confined, so each Flower bench runs in a network
namespace of its own (``unshare -n``, loopback up; needs root or user namespaces).

    python benchmarks/engines.py [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from fedprune.bench import BenchPlan, run_bench
from fedprune.engine.config import RunConfig
from fedprune.plugins import get_plugin_manager


def plan(k: int, rounds: int) -> BenchPlan:
    config = RunConfig(rounds=rounds, clients=16, clients_per_round=k, eval_every=rounds,
                       density=0.2, options={"cosine.interval": 1, "cosine.stop": 1.0})
    return BenchPlan(("feddst",), (0,), (config,))


def drive(out: Path, k: int, rounds: int, workers: int) -> None:
    """Inside the namespace: the Flower bench, then its figures as one JSON line."""
    from fedprune.flower.simulation import run_bench as on_flower

    (record,) = on_flower(get_plugin_manager(), plan(k, rounds), out, workers=workers, threads=1)
    flower = json.loads((out / "flower.json").read_text())
    (run,) = flower["runs"].values()
    print(json.dumps({
        "seconds_per_round": record["wall_seconds"] / rounds,
        "final_accuracy": record["final_accuracy"], "digest": run["final_state_sha256"],
        "held": max(e["held"] for e in run["exchanges"]), "window": flower["window"],
        "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def in_process(out: Path, k: int, rounds: int) -> dict:
    from fedprune.engine.client import InProcessClients
    from fedprune.flower.server import state_digest

    trainers = []

    def executor(trainer):
        trainers.append(trainer)
        return InProcessClients(trainer)

    (record,) = run_bench(get_plugin_manager(), plan(k, rounds), out, executor=executor)
    return {"seconds_per_round": record["wall_seconds"] / rounds,
            "final_accuracy": record["final_accuracy"],
            "digest": state_digest(trainers[0].model.state_dict())}


def on_flower(out: Path, k: int, rounds: int, workers: int) -> dict:
    script = (f"ip link set lo up && exec {sys.executable} {Path(__file__).resolve()} --drive "
              f"{out} {k} {rounds} {workers}")
    run = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True,
                         timeout=900)
    if run.returncode:
        raise SystemExit(f"the Flower bench failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--drive", nargs=4, metavar=("OUT", "K", "ROUNDS", "WORKERS"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.drive:
        out, k, rounds, workers = args.drive
        drive(Path(out), int(k), int(rounds), int(workers))
        return
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        raise SystemExit("needs a private network namespace (unshare -n, as root) to confine Ray")
    os.environ.setdefault("FEDPRUNE_DISABLE_PLUGIN_AUTOLOAD", "1")
    torch.set_num_threads(1)  # as the actors: the same threads, the same bits
    print(f"FedDST, digits CNN, 16 clients, {args.rounds} rounds; Flower: {args.workers} actors")
    print("| K | engine | s per round | same final weights | replies held at most | "
          "driver peak RSS MiB |\n|---:|---|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for k in (2, 8):
            local = in_process(Path(tmp) / f"local{k}", k, args.rounds)
            flower = on_flower(Path(tmp) / f"flower{k}", k, args.rounds, args.workers)
            same = "yes" if flower["digest"] == local["digest"] else "NO"
            print(f"| {k} | in process | {local['seconds_per_round']:.2f} | | | |")
            print(f"| {k} | Flower | {flower['seconds_per_round']:.2f} | {same} | "
                  f"{flower['held']} (window {flower['window']}) | "
                  f"{flower['driver_peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
