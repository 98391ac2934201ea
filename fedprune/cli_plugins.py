"""``fedprune plugins``: what is installed, what each plugin registers, and component options.

Works when plugins clash (the clash is shown, not raised) and lists plugins that failed to load
or were disabled. Imports no torch: built-in components are registered by import path.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click
from rich.table import Table

from fedprune.cli_common import console, out, plugin_manager
from fedprune.errors import FedpruneError


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--options", "options_of", metavar="NAME",
              help="Show the options of component or method NAME and their defaults.")
def plugins(as_json: bool, options_of: str | None) -> None:
    """List installed plugins, what each registers, and the methods' slots."""
    from fedprune.registry import MIXABLE_KINDS, Method

    pm = plugin_manager(strict=False)
    try:
        registry = pm.collect(strict=False)
    except FedpruneError as exc:
        raise click.ClickException(str(exc)) from None
    if options_of:
        _options(registry, options_of, as_json)
        return
    infos = pm.plugin_infos(registry)
    if as_json:
        payload = []
        for info in infos:
            entry = {k: v for k, v in asdict(info).items() if k != "traceback" and v is not None}
            clashes = [c["message"] for c in registry.conflicts if info.name in c["plugins"]]
            if clashes:
                entry["clashes"] = clashes
            payload.append(entry)
        click.echo(json.dumps(payload, indent=2))
        return
    table = Table(title="fedprune plugins")
    for name in ("plugin", "distribution", "version", "status", "registers"):
        table.add_column(name)
    for info in infos:
        registers = "\n".join(f"{k}: {', '.join(v)}" for k, v in info.registers.items())
        status = info.status if info.status == "loaded" else f"[red]{info.status}[/]"
        table.add_row(info.name, info.distribution, info.version, status,
                      registers or info.error or "-")
    out.print(table)
    methods = Table(title="methods and their slots (A+B puts component B into its kind's slot)")
    for name in ("method", "summary", "slots"):
        methods.add_column(name)
    for m in registry.records("method"):
        assert isinstance(m, Method)
        slots = "\n".join(f"{k}: {v}" for k, v in m.slots().items() if v)
        methods.add_row(m.name, m.summary, slots or "-")
    out.print(methods)
    mixable = ", ".join(f"{k} ({', '.join(registry.names(k)) or '-'})" for k in MIXABLE_KINDS)
    out.print(f"mixable kinds: {mixable}")
    for clash in registry.conflicts:
        console.print(f"[red]clash:[/] {clash['message']}", highlight=False)


def _options(registry: Any, name: str, as_json: bool) -> None:
    from fedprune.registry import Method

    record = registry.find(name)
    if record is None:
        raise click.UsageError(f"no component or method called {name!r} (see `fedprune plugins`)")
    try:
        options = dict(record.options) if isinstance(record, Method) else record.options()
    except FedpruneError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"name": name, "kind": record.kind, "options": options},
                              indent=2, default=repr))
        return
    what = "default options of the recipe" if isinstance(record, Method) else "options"
    table = Table(title=f"{record.kind} {name}: {what} (-o {name}.OPTION=VALUE)")
    table.add_column("option")
    table.add_column("default")
    for key, value in options.items():
        table.add_row(key, repr(value))
    out.print(table)
