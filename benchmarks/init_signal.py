"""Signal at initialisation: logits RMS of each built-in model on unit-variance input, with
BatchNorm and as its NSConv twin (activations scaled as by default, all scaled, none scaled).

Without BatchNorm a plain ReLU halves the signal's second moment at every layer; NSConv scales
activations to keep it (docs/methods.md). The NSConv figure should be at least a tenth of the
BatchNorm one for every model. Models are in training mode (BatchNorm normalises with the batch
statistics, as in training), inputs standard normal, batch 16, 32x32 (8x8 for the digits CNN).

    python benchmarks/init_signal.py [--json] [--models cnn,resnet18,...] [--seed 0]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where its name would shadow the
# standard library's `signal` (which torch imports): take the folder out first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402

from fedprune.plugins import get_plugin_manager  # noqa: E402

MODELS = ("cnn", "cifar_resnet", "resnet18", "mobilenetv2")


def logits_rms(model: torch.nn.Module, shape: tuple[int, int, int], seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, *shape, generator=generator)
    model.train()
    with torch.no_grad():
        return float(model(x).square().mean().sqrt())


def measure(models: list[str], seed: int = 0) -> list[dict[str, float | str]]:
    registry = get_plugin_manager().registry
    rows = []
    for name in models:
        shape = (1, 8, 8) if name == "cnn" else (3, 32, 32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            base = registry.get(name, "model").build(num_classes=10, input_shape=shape)
        row: dict[str, float | str] = {"model": name, "bn_rms": logits_rms(base, shape, seed)}
        for key, scaling in (("nsconv_rms", "auto"), ("nsconv_all_rms", "all"),
                             ("nsconv_none_rms", "none")):
            twin = copy.deepcopy(base)
            transform = registry.get("nsconv", "model_transform").build(scale_activations=scaling)
            transform.apply(twin)
            row[key] = logits_rms(twin, shape, seed)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    rows = measure([m for m in args.models.split(",") if m], args.seed)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| model | BatchNorm | NSConv (default: auto) | NSConv, all scaled | NSConv, none |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['bn_rms']:.3g} | {r['nsconv_rms']:.3g} | "
              f"{r['nsconv_all_rms']:.3g} | {r['nsconv_none_rms']:.3g} |")


if __name__ == "__main__":
    main()
