"""Memory ablation of the FedMef client: which part of the saving is FedMef's, which is engineering.

Every configuration is a method spec plus options, built exactly as ``fedprune bench`` builds a
client (same base weights, transforms, compressors, initial masks at the density) and measured on
one SGD step of batch ``--batch-size`` with `fedprune.memory.measure_training_step`: parameters in
their cheapest sparse format plus the bytes autograd keeps for backward (the footprint), and the
process RSS peak over the step. Step time is the engine's normal-round client step (forward,
cross-entropy, backward, gradient mask, SGD, weight mask), timed with all configurations
interleaved in one process (rotated order each round), so each ratio to the baseline compares
steps taken under the same load; medians over ``--repeats`` rounds.

Configurations (``-o`` options apply to that configuration only; SAP's gamma is swept):

- ``a`` ``feddst``: the baseline, FedDST's BatchNorm client with torch's own activations.
- ``b`` ``feddst+bitact``: the baseline with 1-bit ReLU/ReLU6 (engineering any method can use).
- ``c0`` ``feddst+nsconv -o nsconv.recompute=false``: NSConv written as the textbook
  standardisation (FedMef's idea as stated).
- ``c`` ``feddst+nsconv``: NSConv with the standardised weight recomputed in backward.
- ``d0`` ``feddst+nsconv+sap -o nsconv.recompute=false``: NSConv + SAP, FedMef's two memory ideas
  without any engineering beyond SAP's 1-bit keep-mask.
- ``d`` ``feddst+nsconv+sap``: the same with recompute. The ``fedmef`` recipe's client is exactly
  this (``nsconv`` + ``sap``; its regularizer ``bae`` saves nothing weight- or activation-sized).
- ``e`` ``fedmef+bitact``: the full FedMef client with 1-bit activations.
- ``f`` ``fedmef+bitact -o sap.values=bfloat16``: and SAP's kept values in bf16.
- ``x`` ``fedmef+bitact -o sap.threshold=exact``: ``e`` with an exact top-k threshold, to show
  what the estimated threshold saves in time (its footprint equals ``e``'s up to sampling).

Run: ``python benchmarks/memory_ablation.py`` (ResNet18 and MobileNetV2 at 32x32, gamma
0.5/0.7/0.9, step time at gamma 0.7). Restrict with ``--models``, ``--sizes``, ``--gammas``,
``--configs``; ``--time-gammas ''`` times only the configurations without SAP, ``--repeats 0``
none. Results and their reading: docs/memory_ablation.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
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
from fedprune.plugins import PluginManager, get_plugin_manager

MiB = 2**20

#: Where a configuration's saving comes from.
BASELINE, IDEA, ENGINEERING = "baseline", "FedMef idea", "engineering"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One configuration: a method spec, the options only it gets, and what it adds."""

    key: str
    spec: str
    options: tuple[tuple[str, Any], ...] = ()
    adds: str = ""
    source: str = ENGINEERING

    @property
    def label(self) -> str:
        opts = " ".join(f"-o {k}={_opt(v)}" for k, v in self.options)
        return f"`{self.spec}{' ' + opts if opts else ''}`"


def _opt(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


TEXTBOOK = (("nsconv.recompute", False),)
VARIANTS: tuple[Variant, ...] = (
    Variant("a", "feddst", (), "BatchNorm FedDST client (baseline)", BASELINE),
    Variant("b", "feddst+bitact", (), "1-bit ReLU/ReLU6", ENGINEERING),
    Variant("c0", "feddst+nsconv", TEXTBOOK, "NSConv, textbook standardisation", IDEA),
    Variant("c", "feddst+nsconv", (), "NSConv, W^ recomputed in backward", ENGINEERING),
    Variant("d0", "feddst+nsconv+sap", TEXTBOOK, "NSConv (textbook) + SAP", IDEA),
    Variant("d", "feddst+nsconv+sap", (), "NSConv (recompute) + SAP = fedmef's client",
            ENGINEERING),
    Variant("e", "fedmef+bitact", (), "full FedMef + 1-bit activations", ENGINEERING),
    Variant("f", "fedmef+bitact", (("sap.values", "bfloat16"),), "e + bf16 SAP values",
            ENGINEERING),
    Variant("x", "fedmef+bitact", (("sap.threshold", "exact"),), "e with exact top-k threshold",
            ENGINEERING),
)

#: (model, input size) -> (footprint of e, footprint of f, step time of e), ratios to ``a``.
TARGETS: dict[tuple[str, int], tuple[float, float, float]] = {
    ("resnet18", 32): (0.22, 0.14, 1.25),
    ("mobilenetv2", 32): (0.13, 0.08, 1.6),
}


# ------------------------------------------------------------------------------- building


@dataclasses.dataclass
class Client:
    """A built client model with its masks, ready to measure or time."""

    variant: Variant
    gamma: float | None  # SAP's gamma; None when the configuration has no SAP
    model: nn.Module
    masks: dict[str, Tensor] | None
    config: RunConfig


def uses_sap(pm: PluginManager, spec: str) -> bool:
    return "sap" in pm.registry.method(spec).activation_compressors


def federation(
    pm: PluginManager, run: Mapping[str, Any], shape: Sequence[int], num_classes: int, seed: int
) -> Federation:
    """Random images of ``shape`` split over clients, and the base model: shared by variants."""
    data = load_synthetic(tuple(shape), num_classes, size=max(640, 10 * run["batch_size"]))
    return make_federation(pm.registry, RunConfig(**run), seed, data)


def build_client(
    pm: PluginManager,
    variant: Variant,
    gamma: float | None,
    shared: Federation,
    run: Mapping[str, Any],
) -> Client:
    """The variant's client, prepared by the bench's own pipeline (`fedprune.engine.prepare`).

    ``run`` holds the RunConfig fields shared by every variant (model, batch size, density,
    options such as the model's own); the variant's options and the gamma are added on top.
    """
    options = {**run.get("options", {}), **dict(variant.options)}
    if gamma is not None:
        options["sap.gamma"] = gamma
    config = RunConfig(**{**run, "options": options})
    (method,) = resolve_methods(pm, [variant.spec], [config])
    prepared = prepare(pm.registry, method, dataclasses.replace(shared, config=config))
    return Client(variant, gamma, prepared.model, prepared.masks, config)


def train_step(client: Client, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer) -> None:
    """One normal-round client step as the engine's LocalTrainer takes it."""
    params = dict(client.model.named_parameters())
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(client.model(x), y).backward()
    if client.masks is not None:
        M.mask_gradients(params, client.masks)
    optimizer.step()
    if client.masks is not None:
        M.apply_masks(params, client.masks)


def time_steps(
    clients: Sequence[Client], x: Tensor, y: Tensor, repeats: int, warmup: int = 1
) -> tuple[list[list[float]], list[list[float]]]:
    """Wall and CPU seconds per step, each ``[client][round]``; rounds visit every client in
    rotated order.

    CPU time (``time.process_time``: this process's threads, while they run) is what a step
    costs; on a shared machine wall time also counts the time other processes hold the cores,
    which is noise to a comparison. The models train on (their parameters change), which does
    not change the work per step.
    """
    optimizers = [
        torch.optim.SGD(c.model.parameters(), lr=c.config.lr, momentum=c.config.momentum)
        for c in clients
    ]
    for c in clients:
        c.model.train()
    wall: list[list[float]] = [[] for _ in clients]
    cpu: list[list[float]] = [[] for _ in clients]
    n = len(clients)
    for r in range(warmup + repeats):
        for i in [(r + j) % n for j in range(n)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            train_step(clients[i], x, y, optimizers[i])
            if r >= warmup:
                cpu[i].append(time.process_time() - start_cpu)
                wall[i].append(time.perf_counter() - start)
    for c in clients:
        for p in c.model.parameters():
            p.grad = None
    return wall, cpu


# ------------------------------------------------------------------------------- measuring


def ablate(
    pm: PluginManager,
    model: str,
    input_shape: Sequence[int],
    *,
    variants: Sequence[Variant] = VARIANTS,
    gammas: Sequence[float] = (0.7,),
    time_gammas: Sequence[float] = (0.7,),
    batch_size: int = 64,
    density: float = 0.1,
    num_classes: int = 10,
    seed: int = 0,
    repeats: int = 5,
    memory_repeats: int = 1,
    options: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every (variant, gamma) of one model and input; ratios to the first variant.

    Variants without SAP are measured once (gamma None). Footprints are deterministic; the RSS
    delta is the median over ``memory_repeats`` passes (rotated order). Step times (CPU:
    ``step_*``, wall: ``wall_*``) are medians over ``repeats`` interleaved rounds of the clients
    with no SAP or a gamma in ``time_gammas``; a ratio is the median of per-round ratios to the
    baseline's step in the same round (``repeats=0``: no timing). The memory pass doubles as
    the timed clients' warm-up. Returns one dict per (variant, gamma).
    """
    log = log or (lambda _msg: None)
    shape = tuple(int(v) for v in input_shape)
    run = {"model": model, "batch_size": batch_size, "density": density,
           "options": dict(options or {})}
    shared = federation(pm, run, shape, num_classes, seed)
    x, y = shared.memory_batch()
    pairs = [(v, g) for v in variants for g in (gammas if uses_sap(pm, v.spec) else (None,))]
    timed = [(v, g) for v, g in pairs if repeats > 0 and (g is None or g in time_gammas)]

    reports: dict[tuple[str, float | None], list] = {}
    clients: dict[tuple[str, float | None], Client] = {}
    for r in range(memory_repeats):
        for i in range(len(pairs)):
            variant, gamma = pairs[(r + i) % len(pairs)]
            key = (variant.key, gamma)
            client = clients.get(key) or build_client(pm, variant, gamma, shared, run)
            start = time.perf_counter()
            report = measure_training_step(
                client.model, x, y, client.masks, lr=client.config.lr,
                momentum=client.config.momentum,
            )
            reports.setdefault(key, []).append(report)
            if (variant, gamma) in timed:
                clients[key] = client
            log(f"{model} {'x'.join(map(str, shape[1:]))} {variant.key} gamma={gamma}: "
                f"{report.total_bytes / MiB:.1f} MiB ({time.perf_counter() - start:.1f} s)")

    wall: dict[tuple[str, float | None], list[float]] = {}
    cpu: dict[tuple[str, float | None], list[float]] = {}
    if timed:
        start = time.perf_counter()
        order = [clients[(v.key, g)] for v, g in timed]
        # The memory pass has already run one step of each timed client: no extra warm-up.
        walls, cpus = time_steps(order, x, y, repeats, warmup=0)
        for client, w, c in zip(order, walls, cpus, strict=True):
            wall[(client.variant.key, client.gamma)] = w
            cpu[(client.variant.key, client.gamma)] = c
        log(f"{model}: timed {len(order)} clients x {repeats} rounds "
            f"({time.perf_counter() - start:.0f} s)")
    clients.clear()

    base_key = (variants[0].key, pairs[0][1])
    base_report = reports[base_key][0]
    base_rss = statistics.median(r.peak_rss_delta_bytes for r in reports[base_key])
    rows = []
    for variant, gamma in pairs:
        key = (variant.key, gamma)
        first = reports[key][0]
        if any(r.total_bytes != first.total_bytes for r in reports[key][1:]):
            log(f"note: footprint of {variant.key} gamma={gamma} varied across passes")
        rss = statistics.median(r.peak_rss_delta_bytes for r in reports[key])
        row = {
            "model": model, "input": f"{shape[1]}x{shape[2]}", "config": variant.key,
            "spec": variant.spec, "options": dict(variant.options), "label": variant.label,
            "adds": variant.adds, "source": variant.source, "gamma": gamma,
            "params_bytes": first.params_bytes, "activation_bytes": first.activation_bytes,
            "total_bytes": first.total_bytes, "rss_delta_bytes": rss,
            "footprint_ratio": first.total_bytes / base_report.total_bytes,
            "rss_ratio": rss / base_rss if base_rss > 0 else None,
        }
        for name, times in (("step", cpu), ("wall", wall)):
            mine, theirs = times.get(key), times.get(base_key)
            row[f"{name}_seconds"] = statistics.median(mine) if mine else None
            row[f"{name}_ratio"] = None
            if mine and theirs:
                row[f"{name}_ratio"] = statistics.median(
                    t / b for t, b in zip(mine, theirs, strict=True)
                )
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------- reporting


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """One markdown table of rows of one model and input."""
    head = ("| cfg | configuration | adds | source | gamma | params MiB | activ. MiB | "
            "footprint MiB | footprint / a | RSS peak Δ / a | step CPU ms | step CPU / a | "
            "step wall / a |")
    lines = [head, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        step_ms = None if r["step_seconds"] is None else r["step_seconds"] * 1e3
        lines.append(
            f"| {r['config']} | {r['label']} | {r['adds']} | {r['source']} | "
            f"{_fmt(r['gamma'], 'g')} | {r['params_bytes'] / MiB:.2f} | "
            f"{r['activation_bytes'] / MiB:.1f} | {r['total_bytes'] / MiB:.1f} | "
            f"{r['footprint_ratio']:.3f} | {_fmt(r['rss_ratio'], '.2f')} | "
            f"{_fmt(step_ms, '.0f')} | {_fmt(r['step_ratio'], '.2f')} | "
            f"{_fmt(r['wall_ratio'], '.2f')} |"
        )
    return "\n".join(lines)


def _pick(rows: Sequence[dict[str, Any]], key: str, gamma: float) -> dict[str, Any] | None:
    for r in rows:
        if r["config"] == key and r["gamma"] in (None, gamma):
            return r
    return None


def attribution(rows: Sequence[dict[str, Any]], gamma: float) -> str:
    """The chain a -> d0 -> d -> e -> f: how much of the baseline footprint each step removes.

    The order matters (SAP saves more once nothing else keeps full activations), so the
    engineering-only view b (1-bit activations on the baseline) is given too.
    """
    chain = [("a", "baseline"), ("d0", "FedMef's ideas: NSConv + SAP"),
             ("d", "+ recompute W^ (engineering)"), ("e", "+ 1-bit activations (engineering)"),
             ("f", "+ bf16 SAP values (engineering)")]
    found = [(k, what, _pick(rows, k, gamma)) for k, what in chain]
    found = [(k, what, r) for k, what, r in found if r is not None]
    if len(found) < 2:
        return ""
    lines = [f"Attribution at gamma {gamma:g} (points of the baseline footprint removed by each "
             "step, in this order):", "",
             "| step | footprint / a | removed |", "|---|---:|---:|"]
    prev = None
    for k, what, r in found:
        removed = "-" if prev is None else f"{(prev - r['footprint_ratio']) * 100:+.1f}"
        lines.append(f"| {k}: {what} | {r['footprint_ratio']:.3f} | {removed} |")
        prev = r["footprint_ratio"]
    b = _pick(rows, "b", gamma)
    if b is not None:
        lines.append(f"| b: engineering alone (1-bit activations on the baseline) | "
                     f"{b['footprint_ratio']:.3f} | {(1 - b['footprint_ratio']) * 100:+.1f} |")
    return "\n".join(lines)


def targets(rows: Sequence[dict[str, Any]], gamma: float) -> str:
    """Reached against the issue's targets (ratios to ``a`` in this run)."""
    if not rows:
        return ""
    size = int(rows[0]["input"].split("x")[0])
    target = TARGETS.get((rows[0]["model"], size))
    e, f = _pick(rows, "e", gamma), _pick(rows, "f", gamma)
    if target is None or e is None:
        return ""

    def check(label: str, value: float | None, limit: float) -> str:
        if value is None:
            return f"| {label} | <= {limit} | not measured | - |"
        return f"| {label} | <= {limit} | {value:.3f} | {'met' if value <= limit else 'MISSED'} |"

    lines = [f"Targets at gamma {gamma:g}:", "", "| quantity | target | reached | |",
             "|---|---:|---:|---|",
             check("footprint e / a", e["footprint_ratio"], target[0])]
    if f is not None:
        lines.append(check("footprint f / a (bf16)", f["footprint_ratio"], target[1]))
    lines.append(check("step CPU time e / a", e["step_ratio"], target[2]))
    lines.append(check("step wall time e / a", e["wall_ratio"], target[2]))
    return "\n".join(lines)


def _list(kind: type) -> Callable[[str], list]:
    return lambda text: [kind(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=_list(str), default=["resnet18", "mobilenetv2"])
    p.add_argument("--sizes", type=_list(int), default=[32], help="input H = W (3 channels)")
    p.add_argument("--gammas", type=_list(float), default=[0.5, 0.7, 0.9])
    p.add_argument("--time-gammas", type=_list(float), default=[0.7],
                   help="gammas whose SAP configurations are timed ('': none of them)")
    p.add_argument("--configs", type=_list(str), default=[v.key for v in VARIANTS],
                   help="configuration keys; the first is the baseline of the ratios")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--num-classes", type=int, default=None,
                   help="default: 200 for inputs of 64x64 and larger, else 10")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (0: no timing)")
    p.add_argument("--memory-repeats", type=int, default=1,
                   help="memory passes; the RSS delta is their median")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 keeps CPU time free of idle-thread spinning")
    p.add_argument("--summary-gamma", type=float, default=0.7)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    by_key = {v.key: v for v in VARIANTS}
    unknown = [k for k in args.configs if k not in by_key]
    if unknown:
        sys.exit(f"unknown configuration(s) {unknown}; known: {', '.join(by_key)}")
    variants = [by_key[k] for k in args.configs]
    pm = get_plugin_manager()
    gc.freeze()  # the measured step's gc.collect() then skips the long-lived import-time objects
    recipe = pm.registry.method("fedmef")
    print(f"fedmef recipe: transforms {list(recipe.model_transforms)}, compressors "
          f"{list(recipe.activation_compressors)}, regularizer {recipe.regularizer}\n")
    started = time.perf_counter()
    for model in args.models:
        for size in args.sizes:
            classes = args.num_classes or (200 if size >= 64 else 10)
            rows = ablate(
                pm, model, (3, size, size), variants=variants, gammas=args.gammas,
                time_gammas=args.time_gammas, batch_size=args.batch_size, density=args.density,
                num_classes=classes, seed=args.seed, repeats=args.repeats,
                memory_repeats=args.memory_repeats,
                log=lambda msg: print(msg, file=sys.stderr, flush=True),
            )
            print(f"### {model}, {size}x{size}, batch {args.batch_size}, density "
                  f"{args.density:g}, {classes} classes\n")
            print(table(rows) + "\n")
            for part in (attribution(rows, args.summary_gamma), targets(rows, args.summary_gamma)):
                if part:
                    print(part + "\n")
            sys.stdout.flush()
    print(f"({time.perf_counter() - started:.0f} s; {args.threads} threads, {args.repeats} timed "
          f"rounds, torch {torch.__version__})")


if __name__ == "__main__":
    main()
