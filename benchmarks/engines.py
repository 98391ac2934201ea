"""The in-process engine against Flower's simulation engine with 1 and 2 actors.

One bench per row (FedDST, 16 clients, K per round, ``--rounds`` rounds, 2 local steps), each in
a fresh process so its peak RSS is its own: the digits CNN on the embedded digits, and ResNet18
on synthetic 32x32 images (batch 32). Printed per row: seconds per round (the round loop's wall
time, results.json), message bytes per round (up + down, as fedprune counts them: the
serialized arrays), whether the final global weights equal the in-process ones (SHA-256), the
most client replies the server held at once (``flower.json``), and the peak RSS of the process
that runs the server (for Flower: the ServerApp and Ray's driver; Ray's actors are other
processes). K = 8 with 2 actors shows the server's memory does not grow with K.

Ray opens ports on every interface unless confined, so each Flower bench runs in a network
namespace of its own (``unshare -n``, loopback up; needs root or user namespaces).

    python benchmarks/engines.py [--rounds 3] [--models cnn,resnet18]
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

ROWS = ((2, 0), (2, 1), (2, 2), (8, 0), (8, 2))  # (K, actors); 0 actors: in process


def plan(model: str, k: int, rounds: int):
    from fedprune.bench import BenchPlan
    from fedprune.engine.config import RunConfig

    options = {"cosine.interval": 1, "cosine.stop": 1.0}
    data = {}
    if model != "cnn":
        data = {"dataset": "synthetic"}
        options.update({"synthetic.shape": "3,32,32", "synthetic.size": 640})
    config = RunConfig(model=model, rounds=rounds, clients=16, clients_per_round=k,
                       local_steps=2, eval_every=rounds, density=0.2, options=options, **data)
    return BenchPlan(("feddst",), (0,), (config,))


def drive(out: Path, model: str, k: int, rounds: int, actors: int) -> None:
    """One bench in this process; its figures as one JSON line."""
    import torch

    from fedprune.bench import run_bench
    from fedprune.engine.client import InProcessClients
    from fedprune.plugins import get_plugin_manager

    torch.set_num_threads(1)  # as each actor: the same threads, the same bits
    pm, bench = get_plugin_manager(), plan(model, k, rounds)
    held = window = None
    if actors:
        from fedprune.flower.simulation import run_bench as on_flower

        (record,) = on_flower(pm, bench, out, workers=actors, threads=1)
        flower = json.loads((out / "flower.json").read_text())
        (run,) = flower["runs"].values()
        digest, window = run["final_state_sha256"], flower["window"]
        held = max(e["held"] for e in run["exchanges"])
    else:
        from fedprune.flower.server import state_digest

        trainers = []

        def executor(trainer):
            trainers.append(trainer)
            return InProcessClients(trainer)

        (record,) = run_bench(pm, bench, out, executor=executor)
        digest = state_digest(trainers[0].model.state_dict())
    print(json.dumps({
        "seconds_per_round": record["wall_seconds"] / rounds,
        "bytes_per_round": (record["upload_bytes"] + record["download_bytes"]) / rounds,
        "digest": digest, "held": held, "window": window,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def measure(out: Path, model: str, k: int, rounds: int, actors: int) -> dict:
    command = (f"exec {sys.executable} {Path(__file__).resolve()} --drive {out} {model} {k} "
               f"{rounds} {actors}")
    if actors:
        command = ["unshare", "-n", "sh", "-c", "ip link set lo up && " + command]
    else:
        command = ["sh", "-c", command]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if run.returncode:
        raise SystemExit(f"the bench failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", default="cnn,resnet18")
    p.add_argument("--drive", nargs=5, metavar=("OUT", "MODEL", "K", "ROUNDS", "ACTORS"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.drive:
        out, model, k, rounds, actors = args.drive
        drive(Path(out), model, int(k), int(rounds), int(actors))
        return
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        raise SystemExit("needs a private network namespace (unshare -n, as root) to confine Ray")
    os.environ.setdefault("FEDPRUNE_DISABLE_PLUGIN_AUTOLOAD", "1")
    print(f"FedDST, 16 clients, {args.rounds} rounds, 2 local steps, 1 torch thread per process")
    print("| model | K | engine | s per round | message MB per round | same final weights | "
          "replies held at most | server peak RSS MiB |\n|---|---:|---|---:|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            local: dict[int, dict] = {}
            for k, actors in ROWS:
                row = measure(Path(tmp) / f"{model}-{k}-{actors}", model, k, args.rounds, actors)
                if not actors:
                    local[k] = row
                engine = f"Flower, {actors} actor{'s' * (actors > 1)}" if actors else "in process"
                same = "" if not actors else ("yes" if row["digest"] == local[k]["digest"]
                                              else "NO")
                held = f"{row['held']} (window {row['window']})" if actors else ""
                print(f"| {model} | {k} | {engine} | {row['seconds_per_round']:.2f} | "
                      f"{row['bytes_per_round'] / 1e6:.2f} | {same} | {held} | "
                      f"{row['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
