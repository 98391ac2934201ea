"""What SAP's threshold costs: exact k-th value vs a sampled estimate vs no SAP, per training step.

For each model (fedprune's ResNet18 and MobileNetV2, CIFAR variants, batch 64, 32x32 inputs), the
same initial weights are built into:

- ``bn``: the plain model (BatchNorm, torch's ReLU / in-place ReLU6), for context;
- ``base``: NSConv + bitact, the FedMef client without SAP (the uncompressed baseline);
- ``exact``: base + SAP with the exact threshold (k-th value of the whole input);
- ``estimate``: base + SAP with the sampled threshold (the default).

One step is forward, cross-entropy and backward. Steps are interleaved (every configuration once
per round, ``--rounds`` rounds after one warm-up round) so machine load drifts hit all alike; the
median is reported. An untimed pass per SAP configuration then records each layer's kept fraction
(the encoding the layer saves, read back through SAP's per-input cache) and the saved activation
bytes (`fedprune.memory.SavedTensorMeter`).

Run: ``python benchmarks/sap_threshold.py`` (about a minute on a quiet 2-core machine).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from fedprune.memory import SavedTensorMeter
from fedprune.models.mobilenet import mobilenetv2
from fedprune.models.resnet import resnet18
from fedprune_plugins.components.bitact import BitAct
from fedprune_plugins.components.nsconv import NSConv
from fedprune_plugins.components.sap import SAP

MODELS = {"resnet18": resnet18, "mobilenetv2": mobilenetv2}


def build(name: str, gamma: float, sample: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    plain = MODELS[name](10, (3, 32, 32))
    configs = {"bn": plain}
    for label, sap in (("base", None), ("exact", "exact"), ("estimate", "estimate")):
        model = copy.deepcopy(plain)
        NSConv().apply(model)
        BitAct().apply(model)
        if sap is not None:
            SAP(gamma=gamma, threshold=sap, sample=sample).apply(model)
        configs[label] = model
    return configs


def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    F.cross_entropy(model(x), y).backward()
    return time.perf_counter() - start


def kept_fractions(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(numel, kept fraction) of every SAP layer's input x~ in one step (compressed inputs: the
    encoding the layer saves, through SAP's per-input cache; shared ones: thresholded as their
    backward does)."""
    records = []

    def record(module, args):
        codec, x = module.input_codec, args[0]
        pruned = codec.decode(codec.encode(x), x.shape, x.dtype)
        records.append((x.numel(), int(pruned.count_nonzero()) / x.numel()))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()
             if isinstance(getattr(m, "input_codec", None), SAP)]
    try:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    finally:
        for h in hooks:
            h.remove()
    return records


def saved_mib(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    with SavedTensorMeter(exclude=model) as meter:
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return meter.bytes / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--gamma", type=float, default=0.7)
    parser.add_argument("--sample", type=int, default=262144)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"{args.size}x{args.size}, gamma {args.gamma}, sample {args.sample}, "
          f"{args.rounds} timed rounds (median)")

    for name in args.models.split(","):
        configs = build(name, args.gamma, args.sample)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
        y = torch.randint(10, (args.batch,), generator=g)
        times: dict[str, list[float]] = {label: [] for label in configs}
        for r in range(args.rounds + 1):
            for label, model in configs.items():
                t = step(model, x, y)
                if r > 0:
                    times[label].append(t)
        med = {label: statistics.median(ts) for label, ts in times.items()}
        print(f"\n{name}")
        print(f"  {'config':<9} {'step s':>7} {'/base':>6} {'/bn':>6} {'saved MiB':>10}")
        for label, model in configs.items():
            print(f"  {label:<9} {med[label]:7.3f} {med[label] / med['base']:6.2f} "
                  f"{med[label] / med['bn']:6.2f} {saved_mib(model, x, y):10.1f}")
        print(f"  estimate / exact step time: {med['estimate'] / med['exact']:.2f}")
        target = 1 - args.gamma
        for label in ("exact", "estimate"):
            recs = kept_fractions(configs[label], x, y)
            errs = [kept - target for _, kept in recs]
            sampled = [kept - target for n, kept in recs if n > args.sample]
            weighted = sum(n * k for n, k in recs) / sum(n for n, _ in recs)
            print(f"  {label:<9} kept fraction over {len(recs)} layers: overall {weighted:.4f} "
                  f"(target {target:.4f}); per layer error max {max(map(abs, errs)):.4f} "
                  f"abs, {max(abs(e) for e in errs) / target:.2%} of target"
                  + (f"; sampled layers ({len(sampled)}) max {max(map(abs, sampled)):.4f} abs, "
                     f"{max(map(abs, sampled)) / target:.2%} of target" if sampled else ""))


if __name__ == "__main__":
    main()
