"""Measured client training footprint: FedMef against FedDST, PruneFL and FedAvg.

For every model, input size and density, each method's client is prepared by the bench's own
pipeline (`fedprune.engine.prepare`; one federation per model and input size, so every method
starts from the same weights) and one SGD step on a batch of random images is measured with
`fedprune.engine.prepare.measure_memory`: parameters in their cheapest sparse format plus the
bytes autograd saves for backward (deduplicated by storage). That sum is the footprint this
line of work reports; see docs/memory.md.

Methods (default): ``fedavg`` (dense), ``prunefl`` and ``feddst`` (the sparse baselines, BatchNorm
models as the papers train them), ``feddst+bitact`` (FedDST with 1-bit ReLU/ReLU6, the generic
engineering any method can use), ``fedmef`` (the recipe: NSConv + SAP) and ``fedmef+bitact``.
The table gives each method's footprint in MiB and the reduction of each FedMef variant against
the best sparse baseline (the smallest footprint among ``--baselines``) and against
``--engineered`` (a baseline with the same generic engineering), so what FedMef's own ideas save
is separated from what 1-bit activations save. Dense methods are measured once per model and
input. 64x64 inputs use 200 classes (TinyImageNet), 32x32 inputs 10 (CIFAR-10), unless
``--num-classes`` is given.

Run: ``python benchmarks/memory.py`` (all; tens of minutes on 2 CPU cores), or restrict, e.g.
``python benchmarks/memory.py --models mobilenetv2 --sizes 32 --densities 0.1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from fedprune.data.synthetic import load_synthetic
from fedprune.engine.config import RunConfig
from fedprune.engine.prepare import make_federation, measure_memory, prepare
from fedprune.plugins import get_plugin_manager

MiB = 2**20
METHODS = "fedavg,prunefl,feddst,feddst+bitact,fedmef,fedmef+bitact"


def _list(kind):
    return lambda text: [kind(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=_list(str), default=["resnet18", "mobilenetv2"])
    p.add_argument("--sizes", type=_list(int), default=[32, 64], help="input H = W (3 channels)")
    p.add_argument("--densities", type=_list(float), default=[0.5, 0.2, 0.1])
    p.add_argument("--methods", type=_list(str), default=METHODS.split(","))
    p.add_argument("--baselines", type=_list(str), default=["prunefl", "feddst"],
                   help="the sparse baselines; the best is the one of smallest footprint")
    p.add_argument("--engineered", default="feddst+bitact",
                   help="a baseline with the same generic engineering (empty: none)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=None,
                   help="default: 200 for inputs of 64x64 and larger, else 10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="component option for every method, e.g. -o sap.gamma=0.7")
    p.add_argument("--json", dest="json_path", help="also write the raw measurements here")
    p.add_argument("--from-json", nargs="+", metavar="PATH",
                   help="print the tables of earlier --json outputs instead of measuring")
    return p.parse_args(argv)


def parse_option(pair: str) -> tuple[str, object]:
    key, _, raw = pair.partition("=")
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


def measure_all(args: argparse.Namespace) -> list[dict]:
    pm = get_plugin_manager()
    options = dict(parse_option(o) for o in args.option)
    records = []
    for model in args.models:
        for size in args.sizes:
            shape = (3, size, size)
            classes = args.num_classes or (200 if size >= 64 else 10)
            config = RunConfig(model=model, batch_size=args.batch_size, options=options)
            data = load_synthetic(shape, classes, size=config.clients * args.batch_size)
            shared = make_federation(pm.registry, config, args.seed, data)
            batch = shared.memory_batch()
            dense_done: dict[str, dict] = {}
            for density in args.densities:
                for spec in args.methods:
                    sparse = pm.registry.method(spec).sparse
                    if not sparse and spec in dense_done:
                        records.append({**dense_done[spec], "density": density})
                        continue
                    start = time.perf_counter()
                    federation = dataclasses.replace(
                        shared, config=dataclasses.replace(config, density=density))
                    run = prepare(pm.registry, pm.registry.method(spec), federation)
                    report = measure_memory(run, batch)
                    record = {
                        "model": model, "input": f"{size}x{size}", "density": density,
                        "method": spec, "classes": classes, **report.as_dict(),
                        "seconds": time.perf_counter() - start,
                    }
                    records.append(record)
                    if not sparse:
                        dense_done[spec] = record
                    print(f"{model} {size}x{size} d={density} {spec}: "
                          f"{record['total_bytes'] / MiB:.1f} MiB "
                          f"({record['seconds']:.1f} s)", file=sys.stderr, flush=True)
    return records


def _extras(spec: str) -> list[str]:
    return spec.split("+")[1:]


def _reduction(value: float, reference: float) -> str:
    return f"{1 - value / reference:.1%}" if reference else "-"


def markdown(records: list[dict], args: argparse.Namespace) -> str:
    methods = args.methods
    subjects = [m for m in methods if m.split("+")[0] == "fedmef"]
    baselines = [m for m in args.baselines if m in methods]
    engineered = args.engineered if args.engineered in methods else None
    # A FedMef variant is set against the engineered baseline with the same extra components.
    paired = [s for s in subjects if engineered and _extras(s) == _extras(engineered)]
    head = ["model", "input", "density", *methods]
    head += [f"{s} vs best of {'/'.join(baselines)}" for s in subjects] if baselines else []
    head += [f"{s} vs {engineered}" for s in paired]
    lines = [
        "Footprint (MiB) = parameters in the cheapest sparse format + saved activations; "
        "reduction = 1 - footprint / reference.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|",
    ]
    groups: dict[tuple, dict[str, dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["input"], r["density"]), {})[r["method"]] = r
    for (model, size, density), by in groups.items():
        total = {m: by[m]["total_bytes"] for m in methods if m in by}
        row = [model, size, f"{density:g}"]
        row += [f"{total[m] / MiB:.1f}" if m in total else "-" for m in methods]
        if baselines:
            best = min(total[b] for b in baselines if b in total)
            row += [_reduction(total[s], best) for s in subjects]
        row += [_reduction(total[s], total[engineered]) for s in paired]
        lines.append("| " + " | ".join(row) + " |")
    # Activations are measured at every density; they do not depend on it (masks change
    # parameter storage only), so one column per method suffices for the breakdown.
    lines += [
        "",
        f"Breakdown, MiB: saved activations + parameters (at density {min(args.densities):g}):",
        "",
        "| model | input | " + " | ".join(methods) + " |",
        "|---|---|" + "|".join(["---:"] * len(methods)) + "|",
    ]
    lowest = min(args.densities)
    for (model, size, density), by in groups.items():
        if density != lowest:
            continue
        cells = [
            f"{by[m]['activation_bytes'] / MiB:.1f} + {by[m]['params_bytes'] / MiB:.2f}"
            if m in by else "-"
            for m in methods
        ]
        lines.append(f"| {model} | {size} | " + " | ".join(cells) + " |")
    # SAP's sampled threshold keeps a data-dependent count, so its saved bytes move slightly
    # with the weights; everything else is exactly density-independent.
    spread: dict[tuple, list[int]] = {}
    for r in records:
        spread.setdefault((r["model"], r["input"], r["method"]), []).append(r["activation_bytes"])
    varying = {k: max(v) / min(v) - 1 for k, v in spread.items() if max(v) != min(v)}
    if varying:
        worst = max(varying.values())
        lines += ["", f"Saved activations vary across densities by at most {worst:.2%} "
                  f"({', '.join(sorted({k[2] for k in varying}))}: SAP's sampled threshold)."]
    lines += [
        "",
        "Peak RSS minus RSS at entry (MiB, min-max over densities; noisy, see docs/memory.md):",
        "",
        "| model | input | " + " | ".join(methods) + " |",
        "|---|---|" + "|".join(["---:"] * len(methods)) + "|",
    ]
    rss: dict[tuple, dict[str, list[int]]] = {}
    for r in records:
        rss.setdefault((r["model"], r["input"]), {}).setdefault(r["method"], []).append(
            r["peak_rss_delta_bytes"]
        )
    for (model, size), by in rss.items():
        cells = [
            f"{min(by[m]) / MiB:.0f}-{max(by[m]) / MiB:.0f}" if m in by else "-" for m in methods
        ]
        lines.append(f"| {model} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.from_json:
        records = [r for path in args.from_json for r in json.load(open(path))]
        args.densities = sorted({r["density"] for r in records}, reverse=True)
        print(markdown(records, args))
        return
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    records = measure_all(args)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(records, f, indent=2)
    print(markdown(records, args))
    print(f"\n({len(records)} measurements, {time.perf_counter() - start:.0f} s, "
          f"batch {args.batch_size}, {args.threads} threads, torch {torch.__version__})")


if __name__ == "__main__":
    main()
