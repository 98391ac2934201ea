"""``fedprune bench``: its options are generated from `fedprune.engine.config.RunConfig`'s
declarations (one definition for the options, the preset keys and the results' ``config``)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from fedprune.cli_common import config_options, console, mb, mib, out, plugin_manager, usage
from fedprune.engine.config import RunConfig, config_fields
from fedprune.errors import FedpruneError, UsageError
from fedprune.options import option_grid, option_label, parse_options, split_sweep

EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def parse_seeds(value: str) -> list[int]:
    try:
        seeds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers",
                                 param_hint="'--seeds'") from None
    if not seeds or min(seeds) < 0:
        raise click.BadParameter(f"{value!r}: seeds are non-negative integers",
                                 param_hint="'--seeds'")
    return seeds


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    return None if value is None else parse_seeds(value)


@click.command("bench")
@click.option("--methods", default="fedavg", show_default=True,
              help="Comma-separated methods; A+B puts component B into method A's slot.")
@click.option("--preset", help="A preset name (see --list-presets) or a TOML path; options "
              "given here override it.")
@click.option("--list-presets", is_flag=True, help="List the shipped presets and exit.")
@config_options
@click.option("--seeds", default="0", show_default=True, callback=_int_list,
              help="Comma-separated seeds.")
@click.option("-o", "--option", "option", multiple=True, metavar="KEY=VALUE[,VALUE...]",
              help="Component option, e.g. -o cosine.interval=5; several values sweep them.")
@click.option("--output", type=click.Path(path_type=Path), default=Path("fedprune-out"),
              show_default=True, help="Output directory.")
@click.option("--overwrite", is_flag=True,
              help="Replace the results (and tracking store) already in --output.")
@click.option("--resume", "resume", type=click.Path(path_type=Path), default=None,
              metavar="OUT", help="Continue the bench in OUT: finished runs are kept, the others "
              "continue from their last checkpoint (other options are ignored).")
@click.option("--checkpoint-every", type=click.IntRange(1), default=10, show_default=True,
              help="Checkpoint each run every this many rounds.")
@click.option("--tracking-uri", default=None,
              help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI or SQLite in --output].")
@click.option("--experiment", default="fedprune", show_default=True,
              help="MLflow experiment name.")
@click.option("--no-tracking", is_flag=True, help="Do not track runs in MLflow.")
@click.option("--no-report", is_flag=True,
              help="Skip the mean ± std report (written when there are several seeds or methods).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="torch CPU threads [default: torch's choice]; recorded in the results.")
@click.option("--engine", type=click.Choice(["local", "flower"]), default="local",
              show_default=True,
              help="local: clients train one after another in this process; flower: on "
              "Flower's simulation engine (Ray), --workers clients at once (needs "
              "fedprune[flower]); the results are the same.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Client actors in parallel with --engine flower.")
@click.pass_context
def bench(ctx: click.Context, **kw: Any) -> None:
    """Train METHODS on the same data, partition and initial weights; compare them.

    Writes OUTPUT/results.json, checkpoints runs, tracks every run in MLflow and, with several
    seeds or methods, writes OUTPUT/report/. --density and -o values may be comma-separated
    lists: every combination is a grid point.
    """
    if kw["list_presets"]:
        from fedprune.presets import list_presets

        click.echo("\n".join(list_presets()))
        return
    import torch

    from fedprune.bench import BenchPlan, Interrupted, run_bench
    from fedprune.progress import RichProgress
    from fedprune.provenance import provenance

    if kw["threads"]:
        torch.set_num_threads(kw["threads"])
    resume = kw["resume"]
    output: Path = resume or kw["output"]
    plan = None if resume else _plan(ctx, kw, BenchPlan)
    engine = run_bench
    if kw["engine"] == "flower":
        engine = _flower_engine(kw["workers"], kw["threads"] or 0)
    elif kw["workers"] != 1:
        raise click.BadParameter("--workers applies to --engine flower only",
                                 param_hint="'--workers'")
    pm = plugin_manager()
    pm.register(RichProgress(console), name="progress")
    if not kw["no_tracking"]:
        from fedprune.tracking import MLflowTracker, resolve_tracking_uri

        pm.register(MLflowTracker(resolve_tracking_uri(kw["tracking_uri"], output), output),
                    name="mlflow")
    record = provenance(torch.get_num_threads())
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        results = engine(pm, plan, output, resume=resume is not None,
                         overwrite=kw["overwrite"], provenance=record,
                         report=not kw["no_report"])
    except Interrupted as stop:
        click.echo(f"interrupted: finished runs are in {output / 'results.json'}; continue "
                   f"with: fedprune bench --resume {output}", err=True)
        sys.exit(EXIT_SIGNAL.get(signal.Signals(stop.signum), 130))
    except UsageError as exc:
        raise usage(exc) from None
    except FedpruneError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    out.print(summary_table(results))
    report = output / "report" / "report.md"
    if report.is_file() and not kw["no_report"]:
        out.print(report.read_text(), markup=False, highlight=False)
    click.echo(f"results: {output / 'results.json'}")
    failed = [r for r in results if r.get("status") != "ok"]
    if failed:
        for r in failed:  # one plain line each, never wrapped
            why = r.get("error") or f"after round {r.get('round')}"
            click.echo(f"{r['key']} {r['status']}: {why}", err=True)
        sys.exit(1)


def _flower_engine(workers: int, threads: int) -> Any:
    """`fedprune.flower.simulation.run_bench` for ``workers`` actors, or a usage error naming
    the extra to install."""
    try:
        import flwr  # noqa: F401
        import ray  # noqa: F401
    except ImportError as exc:
        raise click.UsageError(
            f"--engine flower needs Flower's simulation engine ({exc}); install it with: "
            "pip install 'fedprune[flower]'") from None
    from fedprune.flower.simulation import run_bench as on_flower

    def engine(*args: Any, **kw: Any) -> Any:
        return on_flower(*args, workers=workers, threads=threads, **kw)

    return engine


def _raise_interrupt(signum: int, frame: Any) -> None:
    from fedprune.bench import Interrupted

    raise Interrupted(signum)


def _plan(ctx: click.Context, kw: dict[str, Any], plan_type: Any) -> Any:
    """The bench plan from the options (a preset's values where an option was left default)."""
    if kw["preset"]:
        kw = _apply_preset(ctx, kw)
    specs = [m.strip() for m in kw["methods"].split(",") if m.strip()]
    if not specs:
        raise click.UsageError("--methods is empty")
    try:
        sweeps = parse_options(kw["option"])
        densities = [float(v) for v in split_sweep(str(kw["density"]))]
        grid = []
        for density in densities:
            for options in option_grid(sweeps):
                values = {f.name: kw[f.name] for f in config_fields() if f.name != "density"}
                grid.append(RunConfig(**values, density=density, options=options))
        return plan_type(tuple(specs), tuple(kw["seeds"] or [0]), tuple(grid),
                         kw["checkpoint_every"], kw["experiment"])
    except ValueError:
        raise click.BadParameter(f"{kw['density']!r} is not a number or a comma-separated "
                                 "list of numbers", param_hint="'--density'") from None
    except FedpruneError as exc:
        raise usage(exc) from None


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
        elif ctx.get_parameter_source(key) == source.DEFAULT:
            if key == "seeds" and isinstance(value, str):
                value = parse_seeds(value)
            kw[key] = value
    return kw


def summary_table(results: list[dict[str, Any]]) -> Table:
    """Per run: final and best accuracy, density, traffic (MB), time and memory (MiB)."""
    with_memory = any("memory" in r for r in results)
    table = Table(title="fedprune bench")
    columns = ["method", "d", "seed", "status", "final acc", "best acc", "density",
               "up MB", "down MB", "time s"]
    if any(option_label((r.get("config") or {}).get("options") or {}) for r in results):
        columns.insert(2, "options")
    if with_memory:
        columns += ["params MiB", "activ. MiB", "footprint MiB"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("method", "options", "status")
                         else "right")
    for r in results:
        ok = r.get("status") == "ok"
        config = r.get("config") or {}
        row = {
            "method": r["method"], "d": f"{config.get('density', '-'):g}"
            if isinstance(config.get("density"), (int, float)) else "-",
            "options": option_label(config.get("options") or {}), "seed": str(r["seed"]),
            "status": "ok" if ok else f"[red]{r.get('status')}[/]: {r.get('error', '')[:40]}",
            "final acc": f"{r['final_accuracy']:.2%}" if ok else "-",
            "best acc": f"{r['best_accuracy']:.2%}" if ok else "-",
            "density": f"{r['density']:.3f}" if ok else "-",
            "up MB": mb(r.get("upload_bytes")) if ok else "-",
            "down MB": mb(r.get("download_bytes")) if ok else "-",
            "time s": f"{r.get('wall_seconds', 0):.1f}",
        }
        mem = r.get("memory") or {}
        row.update({"params MiB": mib(mem.get("params_bytes")),
                    "activ. MiB": mib(mem.get("activation_bytes")),
                    "footprint MiB": mib(mem.get("total_bytes"))})
        table.add_row(*(row[c] for c in columns))
    return table
