"""The ``fedprune`` command: bench, plugins (and the data and memory groups).

Every user-fixable problem becomes a one-line ``Error: ...`` and a non-zero exit, never a
traceback: wrong options are usage errors (exit 2), failed runs exit 1 after the summary.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from fedprune.cli_data import data
from fedprune.cli_memory import memory
from fedprune.errors import FedpruneError

console = Console(stderr=True)
# Tables are the product: when stdout is a file or a pipe, do not squeeze them into 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)


def _format_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


def _pm():
    from fedprune.plugins import get_plugin_manager

    try:
        pm = get_plugin_manager()
        _ = pm.registry  # collect now: a duplicate name is a one-line error, not a traceback
        return pm
    except FedpruneError as exc:
        raise click.ClickException(str(exc)) from None


def parse_options(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON where they parse (numbers, booleans)."""
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not key=value (e.g. cosine.interval=5)")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options[key.strip()] = value
    return options


def _int_list(ctx, param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fedprune")
def main() -> None:
    """Compare federated pruning methods on equal terms."""
    warnings.formatwarning = _format_warning


# ---------------------------------------------------------------------------------------- bench

PRESET_KEYS = (
    "methods", "dataset", "model", "rounds", "clients", "clients_per_round", "local_epochs",
    "local_steps", "batch_size", "lr", "momentum", "weight_decay", "density", "partition",
    "dirichlet_alpha", "eval_every", "seeds",
)


@main.command()
@click.option("--methods", default="fedavg", show_default=True,
              help="Comma-separated methods; A+B puts component B into method A's slot.")
@click.option("--preset", help="A preset name from benchmarks/presets (or a TOML path); "
              "options given here override it.")
@click.option("--dataset", default="digits", show_default=True, help="Dataset name.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Where datasets live [default: $FEDPRUNE_DATA or ~/.cache/fedprune/data].")
@click.option("--model", default="cnn", show_default=True, help="Model name.")
@click.option("--rounds", type=click.IntRange(1), default=40, show_default=True)
@click.option("--clients", type=click.IntRange(1), default=10, show_default=True,
              help="Number of clients N.")
@click.option("--clients-per-round", type=click.IntRange(1), default=5, show_default=True,
              help="Clients K sampled per round, without replacement.")
@click.option("--local-epochs", type=click.IntRange(1), default=1, show_default=True)
@click.option("--local-steps", type=click.IntRange(1), default=None,
              help="A fixed number of local steps instead of epochs.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.05, show_default=True)
@click.option("--momentum", type=click.FloatRange(0, 1), default=0.9, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--density", type=click.FloatRange(0, 1, min_open=True), default=0.2,
              show_default=True, help="Target density of sparse methods, in (0, 1].")
@click.option("--partition", default="dirichlet", show_default=True,
              help="Partitioner: dirichlet or iid.")
@click.option("--dirichlet-alpha", type=click.FloatRange(0, min_open=True), default=0.5,
              show_default=True)
@click.option("--eval-every", type=click.IntRange(1), default=5, show_default=True)
@click.option("--seeds", default="0", show_default=True, callback=_int_list,
              help="Comma-separated seeds.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("fedprune-out"), show_default=True, help="Output directory.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or SQLite in --output].")
@click.option("--no-tracking", is_flag=True, help="Do not track runs in MLflow.")
@click.option("-o", "--option", "option", multiple=True, metavar="KEY=VALUE",
              help="Component option, e.g. -o cosine.interval=5 -o sap.gamma=0.7.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="torch CPU threads [default: torch's choice].")
@click.pass_context
def bench(ctx: click.Context, **kw: Any) -> None:
    """Train METHODS on the same data, partition and initial weights; compare them.

    Writes OUTPUT/results.json and tracks every run in MLflow.
    """
    import torch

    from fedprune.bench import run_bench
    from fedprune.engine.config import RunConfig
    from fedprune.progress import RichProgress
    from fedprune.tracking import MLflowTracker, resolve_tracking_uri

    if kw["preset"]:
        kw = _apply_preset(ctx, kw)
    if kw["threads"]:
        torch.set_num_threads(kw["threads"])
    specs = [m.strip() for m in kw["methods"].split(",") if m.strip()]
    if not specs:
        raise click.UsageError("--methods is empty")
    try:
        config = RunConfig(
            dataset=kw["dataset"], model=kw["model"], data_root=kw["data_root"],
            rounds=kw["rounds"], clients=kw["clients"],
            clients_per_round=kw["clients_per_round"], local_epochs=kw["local_epochs"],
            local_steps=kw["local_steps"], batch_size=kw["batch_size"], lr=kw["lr"],
            momentum=kw["momentum"], weight_decay=kw["weight_decay"], density=kw["density"],
            partition=kw["partition"], dirichlet_alpha=kw["dirichlet_alpha"],
            eval_every=kw["eval_every"], device=kw["device"],
            options=parse_options(kw["option"]),
        )
    except FedpruneError as exc:
        raise click.UsageError(str(exc)) from None
    output: Path = kw["output"]
    pm = _pm()
    pm.register(RichProgress(console), name="progress")
    if not kw["no_tracking"]:
        uri = resolve_tracking_uri(kw["tracking_uri"], output)
        pm.register(MLflowTracker(uri, output), name="mlflow")
    try:
        results = run_bench(pm, specs, config, kw["seeds"] or [0], output)
    except FedpruneError as exc:
        raise click.ClickException(str(exc)) from None
    out.print(summary_table(results))
    click.echo(f"results: {output / 'results.json'}")
    failed = [r for r in results if r.get("status") != "ok"]
    if failed:
        for r in failed:
            console.print(f"[red]{r['method']} (seed {r['seed']}) failed:[/] {r['error']}")
        sys.exit(1)


def _apply_preset(ctx: click.Context, kw: dict[str, Any]) -> dict[str, Any]:
    from fedprune.presets import load_preset

    try:
        preset = load_preset(kw["preset"])
    except FedpruneError as exc:
        raise click.UsageError(str(exc)) from None
    source = click.core.ParameterSource
    for key, value in preset.items():
        if key == "option":
            kw["option"] = tuple(value) + tuple(kw["option"])  # command line wins
        elif key in PRESET_KEYS and ctx.get_parameter_source(key) == source.DEFAULT:
            if key == "seeds" and isinstance(value, str):
                value = _int_list(ctx, None, value)
            kw[key] = value
    return kw


def _mb(value: Any) -> str:
    return f"{value / 1e6:,.2f}" if isinstance(value, (int, float)) else "-"


def summary_table(results: list[dict[str, Any]]) -> Table:
    """Final and best accuracy, density, traffic, time (and memory when measured)."""
    with_memory = any("memory" in r for r in results)
    table = Table(title="fedprune bench")
    for name in ("method", "seed", "status", "final acc", "best acc", "density",
                 "up MB", "down MB", "time s"):
        table.add_column(name, justify="left" if name in ("method", "status") else "right")
    if with_memory:
        for name in ("params MB", "activ. MB", "footprint MB"):
            table.add_column(name, justify="right")
    for r in results:
        ok = r.get("status") == "ok"
        row = [
            r["method"], str(r["seed"]),
            "ok" if ok else f"[red]failed[/]: {r.get('error', '')[:40]}",
            f"{r['final_accuracy']:.2%}" if ok else "-",
            f"{r['best_accuracy']:.2%}" if ok else "-",
            f"{r['density']:.3f}" if ok else "-",
            _mb(r.get("upload_bytes")) if ok else "-",
            _mb(r.get("download_bytes")) if ok else "-",
            f"{r.get('wall_seconds', 0):.1f}",
        ]
        if with_memory:
            mem = r.get("memory") or {}
            row += [_mb(mem.get(k)) for k in ("params_bytes", "activation_bytes", "total_bytes")]
        table.add_row(*row)
    return table


# -------------------------------------------------------------------------------------- plugins


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List installed plugins, what each registers, and the methods' mixable slots."""
    from dataclasses import asdict

    from fedprune.registry import MIXABLE_KINDS

    pm = _pm()
    infos = pm.plugin_infos()
    if as_json:
        click.echo(json.dumps([asdict(i) for i in infos], indent=2))
        return
    table = Table(title="fedprune plugins")
    for name in ("plugin", "distribution", "version", "registers"):
        table.add_column(name)
    for info in infos:
        registers = "\n".join(f"{k}: {', '.join(v)}" for k, v in info.registers.items())
        table.add_row(info.name, info.distribution, info.version, registers or "-")
    out.print(table)
    methods = Table(title="methods and their slots (A+B puts component B into its kind's slot)")
    for name in ("method", "summary", "slots"):
        methods.add_column(name)
    for m in pm.registry.records("method"):
        slots = "\n".join(f"{k}: {v}" for k, v in m.slots().items() if v)
        methods.add_row(m.name, m.summary, slots or "-")
    out.print(methods)
    mixable = ", ".join(f"{k} ({', '.join(pm.registry.names(k)) or '-'})" for k in MIXABLE_KINDS)
    out.print(f"mixable kinds: {mixable}")


main.add_command(data)
main.add_command(memory)
