"""``fedprune memory``: the measured training footprint of each method's client.

Each method's client model is built exactly as ``fedprune bench`` builds it (same base weights,
transforms, compressors and initial masks) and runs one SGD step on a random batch under
`fedprune.memory.measure_training_step`. See docs/memory.md for what is counted.
"""

from __future__ import annotations

import json
from typing import Any

import click

from fedprune.errors import FedpruneError

MiB = 2**20
#: The ``memory`` object of each JSON entry, in this order.
FIELDS = (
    "params_bytes", "activation_bytes", "total_bytes", "grad_bytes", "optimizer_bytes",
    "peak_rss_delta_bytes", "cuda_peak_bytes",
)
_HEADERS = ("params", "activ.", "footprint", "grads", "optim.", "RSS +", "CUDA peak")


def _shape(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in value.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise click.BadParameter(f"{value!r} is not C,H,W: three positive integers, e.g. 3,32,32")
    return shape  # type: ignore[return-value]


@click.command("memory")
@click.option("--methods", default="fedavg,prunefl,feddst,fedmef", show_default=True,
              help="Comma-separated methods; A+B puts component B into method A's slot.")
@click.option("--model", default="cnn", show_default=True, help="Model name.")
@click.option("--input-shape", default="3,32,32", show_default=True, callback=_shape,
              metavar="C,H,W", help="One input's shape.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--density", type=click.FloatRange(0, 1, min_open=True), default=0.1,
              show_default=True, help="Target density of sparse methods, in (0, 1].")
@click.option("--num-classes", type=click.IntRange(1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the initial weights, masks and the random batch.")
@click.option("-o", "--option", "option", multiple=True, metavar="KEY=VALUE",
              help="Component option, e.g. -o sap.gamma=0.7 -o mobilenetv2.stage2_stride=1.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="torch CPU threads [default: torch's choice].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def memory(**kw: Any) -> None:
    """Measure one training step of each method's client: parameters in their cheapest sparse
    format plus the activations autograd saves for backward (the footprint), gradients,
    optimizer state, the process RSS peak and, on CUDA, the allocator's peak."""
    import torch

    from fedprune.bench import resolve_methods
    from fedprune.cli import _pm, parse_options
    from fedprune.engine.build import build_base_model
    from fedprune.engine.config import RunConfig
    from fedprune.memory import measure_method

    specs = [m.strip() for m in kw["methods"].split(",") if m.strip()]
    if not specs:
        raise click.UsageError("--methods is empty")
    if kw["threads"]:
        torch.set_num_threads(kw["threads"])
    device = kw["device"]
    try:
        torch.empty(0, device=device)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise click.UsageError(f"device {device!r} is not usable here: {first}") from None
    pm = _pm()
    try:
        config = RunConfig(
            model=kw["model"], batch_size=kw["batch_size"], density=kw["density"],
            device=device, options=parse_options(kw["option"]),
        )
        methods = resolve_methods(pm, specs, config)
    except (FedpruneError, TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    try:
        base = build_base_model(
            pm.registry, config, kw["num_classes"], kw["input_shape"], kw["seed"]
        )
    except FedpruneError as exc:
        raise click.UsageError(str(exc)) from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise click.UsageError(f"model {config.model!r} cannot be built: {exc}") from None
    rows = []
    for method in methods:
        try:
            report = measure_method(
                pm, method, config, kw["input_shape"], seed=kw["seed"],
                num_classes=kw["num_classes"], base_model=base,
            )
        except FedpruneError as exc:
            raise click.ClickException(str(exc)) from None
        rows.append({"method": method.name, "memory": report.as_dict()})
    if kw["as_json"]:
        click.echo(json.dumps(rows, indent=2))
    else:
        _print_table(rows, kw)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MiB:,.2f}"


def _print_table(rows: list[dict[str, Any]], kw: dict[str, Any]) -> None:
    from rich.table import Table

    from fedprune.cli import out

    shape = ",".join(map(str, kw["input_shape"]))
    table = Table(title=f"fedprune memory: {kw['model']}, input {shape}, batch "
                        f"{kw['batch_size']}, density {kw['density']} (MiB)")
    # The CUDA peak only exists on CUDA: no empty column on the CPU.
    fields = [f for f in FIELDS if any(r["memory"][f] is not None for r in rows)]
    table.add_column("method")
    for field in fields:
        name = _HEADERS[FIELDS.index(field)]
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    table.add_column("ratio", justify="right", no_wrap=True)
    first = rows[0]["memory"]["total_bytes"] if rows else None
    for row in rows:
        mem = row["memory"]
        ratio = f"{mem['total_bytes'] / first:.2f}" if first else "-"
        table.add_row(row["method"], *(_mib(mem[f]) for f in fields), ratio)
    out.print(table)
    base = rows[0]["method"] if rows else "-"
    out.print(
        f"footprint = params (cheapest sparse format) + saved activations; ratio: footprint / "
        f"{base}'s; RSS + = peak RSS minus RSS at entry, noisy (see docs/memory.md)"
    )
