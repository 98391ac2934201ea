"""Does FedMef's compact activation storage cost accuracy? Paired runs over several seeds.

Arms (each a separate bench, because ``-o`` options apply to every method of a bench that uses
the component; the same seeds give every arm the same partition, initial weights and masks):

- ``plain``: ``fedmef -o nsconv.recompute=false``: textbook NSConv, SAP values in float32,
  torch's own ReLU (the storage as FedMef describes it, apart from SAP's 1-bit keep-mask).
- ``compact``: ``fedmef+bitact -o sap.values=bfloat16``: W^ recomputed in backward, 1-bit ReLU,
  SAP values in bf16 (the smallest footprint of benchmarks/memory_ablation.py).
- ``compact-fp32`` (``--arms``): ``fedmef+bitact``: the same without bf16, which separates the
  effect of bf16 rounding from the (exact up to float rounding) recompute and 1-bit ReLU.

Every arm shares ``--gamma`` (SAP's drop fraction) and the run settings below; the defaults are the
bench defaults on the digits dataset except gamma 0.7 and density 0.1, the setting the memory
ablation measures. Prints final accuracy mean ± sample std per arm and the mean ± std of the
per-seed differences to ``plain``.

Run: ``python benchmarks/compact_accuracy.py --seeds 0,1,2,3,4``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fedprune.bench import BenchPlan, run_bench
from fedprune.engine.config import RunConfig
from fedprune.plugins import get_plugin_manager

#: arm -> (method spec, options of that arm only)
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("fedmef", {"nsconv.recompute": False, "sap.values": "float32"}),
    "compact": ("fedmef+bitact", {"sap.values": "bfloat16"}),
    "compact-fp32": ("fedmef+bitact", {"sap.values": "float32"}),
}


def run_arm(
    arm: str, seeds: Sequence[int], settings: Mapping[str, Any], options: Mapping[str, Any],
    output: Path,
) -> dict[int, float]:
    """Final accuracy per seed of one arm (a bench of its one method over ``seeds``)."""
    spec, own = ARMS[arm]
    config = RunConfig(**settings, options={**options, **own})
    plan = BenchPlan((spec,), tuple(seeds), (config,))
    results = run_bench(get_plugin_manager(), plan, output / arm, overwrite=True)
    failed = [r for r in results if r.get("status") != "ok"]
    if failed:
        raise SystemExit(f"{arm}: {failed[0]['method']} seed {failed[0]['seed']} failed: "
                         f"{failed[0]['error']}")
    return {r["seed"]: r["final_accuracy"] for r in results}


def _mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * 100:.2f} ± {std * 100:.2f}"


def report(accuracy: Mapping[str, Mapping[int, float]], seeds: Sequence[int]) -> str:
    """Markdown: per-seed accuracies, mean ± std per arm, paired differences to ``plain``."""
    arms = list(accuracy)
    lines = ["| arm | configuration | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean ± std (%) | diff. to plain, mean ± std (points) |",
             "|---|---|" + "---:|" * (len(seeds) + 2)]
    for arm in arms:
        spec, own = ARMS[arm]
        label = spec + "".join(f" -o {k}={str(v).lower()}" for k, v in own.items())
        accs = [accuracy[arm][s] for s in seeds]
        diff = "-"
        if arm != "plain" and "plain" in accuracy:
            diff = _mean_std([accuracy[arm][s] - accuracy["plain"][s] for s in seeds])
        lines.append(f"| {arm} | `{label}` | " + " | ".join(f"{a * 100:.2f}" for a in accs)
                     + f" | {_mean_std(accs)} | {diff} |")
    return "\n".join(lines)


def _list(kind: type):
    return lambda text: [kind(v) for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", type=_list(str), default=["plain", "compact"],
                   help=f"any of {', '.join(ARMS)}; 'plain' is the reference")
    p.add_argument("--seeds", type=_list(int), default=[0, 1, 2, 3, 4])
    p.add_argument("--gamma", type=float, default=0.7)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=RunConfig.rounds)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", type=Path, default=Path("/tmp/compact-accuracy"))
    args = p.parse_args(argv)
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        sys.exit(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    torch.set_num_threads(args.threads)
    settings = {"density": args.density, "rounds": args.rounds}
    accuracy = {}
    for arm in args.arms:
        start = time.perf_counter()
        accuracy[arm] = run_arm(arm, args.seeds, settings, {"sap.gamma": args.gamma},
                                args.output)
        print(f"{arm}: {json.dumps(accuracy[arm])} ({time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)
    print(f"digits, {args.rounds} rounds, density {args.density:g}, sap.gamma {args.gamma:g}, "
          f"seeds {','.join(map(str, args.seeds))}, otherwise `fedprune bench` defaults\n")
    print(report(accuracy, args.seeds))


if __name__ == "__main__":
    main()
