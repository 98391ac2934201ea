"""``fedprune memory``: the measured training footprint of each method's client.

Each method's client is prepared by the same pipeline as a bench's
(`fedprune.engine.prepare`: same base weights, transforms, compressors, initial masks and
strategy setup) and runs one SGD step on the batch a bench measures, under
`fedprune.memory.measure_training_step`. The options are the bench's (generated from the same
declarations, with the same defaults), so with the same settings the numbers are the bench's
memory column; ``--input-shape`` measures on random images of that shape instead (the
``synthetic`` dataset). See docs/memory.md for what is counted.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click

from fedprune.cli_common import MiB, config_options, mib, out, plugin_manager, usage
from fedprune.errors import FedpruneError

#: The ``memory`` object of each JSON entry, in this order.
FIELDS = (
    "params_bytes", "activation_bytes", "total_bytes", "grad_bytes", "optimizer_bytes",
    "peak_rss_delta_bytes", "cuda_peak_bytes",
)
_HEADERS = ("params", "activ.", "footprint", "grads", "optim.", "RSS +", "CUDA peak")


def _shape(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from fedprune.data.synthetic import parse_shape

    if value is None:
        return None
    try:
        return ",".join(map(str, parse_shape(value)))
    except FedpruneError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("memory")
@click.option("--methods", default="fedavg,prunefl,feddst,fedmef", show_default=True,
              help="Comma-separated methods; A+B puts component B into method A's slot.")
@config_options
@click.option("--input-shape", default=None, callback=_shape, metavar="C,H,W",
              help="Measure on random images of this shape (the synthetic dataset) instead of "
              "--dataset.")
@click.option("--num-classes", type=click.IntRange(1), default=10, show_default=True,
              help="Classes of the random images of --input-shape.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seed of the initial weights, masks and partition.")
@click.option("-o", "--option", "option", multiple=True, metavar="KEY=VALUE",
              help="Component option, e.g. -o sap.gamma=0.7 -o mobilenetv2.stage2_stride=1.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="torch CPU threads [default: torch's choice].")
@click.option("--accounting", type=click.Choice(["measured", "paper"]), default="measured",
              show_default=True,
              help="measured: the parts as configured; paper: each transform and compressor "
              "stores what the paper's accounting counts (e.g. SAP values in float16 plus int32 "
              "indices, NSConv's standardised weight kept; see docs/memory.md).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def memory(**kw: Any) -> None:
    """Measure one training step of each method's client: parameters in their cheapest sparse
    format plus the activations autograd saves for backward (the footprint), gradients,
    optimizer state, the process RSS peak and, on CUDA, the allocator's peak.

    With the bench's settings the numbers are the bench's memory column: the client is
    prepared by the same pipeline and measured on the same batch.
    """
    import torch

    from fedprune.bench import resolve_methods
    from fedprune.engine.config import RunConfig, config_fields
    from fedprune.engine.prepare import make_federation, measure_memory, prepare
    from fedprune.options import parse_options

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
    pm = plugin_manager()
    try:
        options: dict[str, Any] = {}
        for key, values in parse_options(kw["option"]).items():
            if len(values) > 1:
                raise FedpruneError(f"-o {key}: memory measures one setting; sweep with bench")
            options[key] = values[0]
        settings = {f.name: kw[f.name] for f in config_fields()}
        if kw["input_shape"]:
            settings["dataset"] = "synthetic"  # a full batch per client on average
            options.update({"synthetic.shape": kw["input_shape"],
                            "synthetic.classes": kw["num_classes"],
                            "synthetic.size": max(640, kw["clients"] * kw["batch_size"])})
        settings["density"] = float(settings["density"])
        config = RunConfig(**settings, options=options)
        methods = resolve_methods(pm, specs, [config])
        if kw["accounting"] != "measured":  # the parts' own declared options: valid as given
            config = dataclasses.replace(config, options={
                **accounting_options(pm.registry, methods, config, kw["accounting"]), **options})
    except ValueError:
        raise click.BadParameter(f"{kw['density']!r} is not a number",
                                 param_hint="'--density'") from None
    except FedpruneError as exc:
        raise usage(exc) from None
    rows = []
    try:
        registry = pm.registry
        data = registry.get(config.dataset, "dataset").build(
            root=config.data_root, **config.component_options(config.dataset))
        federation = make_federation(registry, config, kw["seed"], data)
        batch = federation.memory_batch()
        for method in methods:
            run = prepare(registry, method, federation)
            rows.append({"method": method.name, "accounting": kw["accounting"],
                         "memory": measure_memory(run, batch).as_dict(),
                         "skipped": skipped_layers(run)})
    except FedpruneError as exc:
        raise click.ClickException(str(exc)) from None
    if kw["as_json"]:
        click.echo(json.dumps(rows, indent=2))
    else:
        _print_table(rows, kw, data.input_shape)


def accounting_options(registry: Any, methods: list[Any], config: Any, accounting: str
                       ) -> dict[str, Any]:
    """``component.option`` overrides that make every transform and compressor of ``methods``
    store what ``accounting`` counts (their ``accountings`` declarations); an explicit ``-o``
    still wins."""
    from fedprune.contracts import ActivationCompressor, ModelTransform
    from fedprune.engine.parts import build_parts

    out: dict[str, Any] = {}
    for method in methods:
        parts = build_parts(registry, method, config)
        named: list[tuple[str, ModelTransform | ActivationCompressor]] = [
            *parts.named(ModelTransform), *parts.named(ActivationCompressor)]
        for name, part in named:
            overrides = part.accountings.get(accounting, {})
            if overrides is None:
                raise FedpruneError(
                    f"{method.name}: {name} has no place in the {accounting!r} accounting; "
                    f"measure without +{name}, or with --accounting measured")
            out.update({f"{name}.{key}": value for key, value in overrides.items()})
    return out


def skipped_layers(run: Any) -> dict[str, dict[str, str]]:
    """Per compressor of the run, the layers it left alone and why."""
    from fedprune.contracts import ActivationCompressor

    skipped = {name: part.skipped() for name, part in run.parts.named(ActivationCompressor)}
    return {name: layers for name, layers in skipped.items() if layers}


def _print_table(rows: list[dict[str, Any]], kw: dict[str, Any], shape: tuple) -> None:
    from rich.table import Table

    table = Table(title=f"fedprune memory: {kw['model']}, input {','.join(map(str, shape))}, "
                        f"batch {kw['batch_size']}, density {kw['density']} (MiB = {MiB} bytes)")
    # The CUDA peak only exists on CUDA: no empty column on the CPU.
    fields = [f for f in FIELDS if any(r["memory"][f] is not None for r in rows)]
    table.add_column("method")
    for field in fields:
        name = f"{_HEADERS[FIELDS.index(field)]} MiB"
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    table.add_column("ratio", justify="right", no_wrap=True)
    first = rows[0]["memory"]["total_bytes"] if rows else None
    for row in rows:
        mem = row["memory"]
        ratio = f"{mem['total_bytes'] / first:.2f}" if first else "-"
        table.add_row(row["method"], *(mib(mem[f]) for f in fields), ratio)
    out.print(table)
    base = rows[0]["method"] if rows else "-"
    out.print(
        f"footprint = params (cheapest sparse format) + saved activations; ratio: footprint / "
        f"{base}'s; RSS + = peak RSS minus RSS at entry, noisy (see docs/memory.md); "
        f"accounting: {kw['accounting']}"
    )
    for row in rows:
        for name, layers in row["skipped"].items():
            by_reason: dict[str, list[str]] = {}
            for layer, why in layers.items():
                by_reason.setdefault(why, []).append(layer)
            for why, names in by_reason.items():
                out.print(f"{row['method']}: {name} left {len(names)} layer(s) alone, {why}: "
                          f"{', '.join(names)}", markup=False, highlight=False)
