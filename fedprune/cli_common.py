"""What the ``fedprune`` subcommands share: consoles, the plugin manager, errors, units.

Every user-fixable problem becomes a one-line ``Error: ...``: a wrong option or value is a usage
error (exit 2), a failure while working exits 1. Nothing here imports torch or mlflow.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from fedprune.engine.config import cli_name, config_fields
from fedprune.errors import FedpruneError

if TYPE_CHECKING:
    from fedprune.plugins import PluginManager

console = Console(stderr=True)
# Tables are the product: when stdout is a file or a pipe, do not squeeze them into 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)

#: ``fedprune -v``: show details such as the traceback of a plugin that failed to load.
VERBOSE = False

#: Units, the same in every table: memory in binary MiB, communication in decimal MB.
MiB = 2**20
MB = 10**6


def mib(value: Any) -> str:
    return f"{value / MiB:,.2f}" if isinstance(value, (int, float)) else "-"


def mb(value: Any) -> str:
    return f"{value / MB:,.2f}" if isinstance(value, (int, float)) else "-"


def usage(exc: Exception) -> click.UsageError:
    return click.UsageError(str(exc))


def plugin_manager(strict: bool = True) -> PluginManager:
    """The plugin manager with every installed plugin; a broken registration is one line.

    ``strict=False`` tolerates duplicate names (for listing what is installed).
    """
    from fedprune.plugins import get_plugin_manager

    try:
        pm = get_plugin_manager()
        if VERBOSE:
            for failure in pm.failures.values():
                console.print(f"plugin {failure.name!r} failed to load:\n{failure.traceback}",
                              markup=False, highlight=False)
        if strict:
            _ = pm.registry  # collect now: a duplicate name is a one-line error
        return pm
    except FedpruneError as exc:
        raise click.ClickException(str(exc)) from None


def show_warnings() -> None:
    """Warnings as one ``warning: ...`` line each (no file and line noise)."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


def _config_option(f: dataclasses.Field) -> Callable:
    """The click option of one `RunConfig` field (values are checked by `RunConfig` itself)."""
    default = f.default
    kind: Any = str
    if f.metadata.get("sweep"):
        kind = str
    elif f.metadata.get("choices"):
        kind = click.Choice(f.metadata["choices"])
    elif isinstance(default, float):
        kind = float
    elif isinstance(default, int) or f.type in ("int", "int | None"):
        kind = int
    return click.option(
        f"--{cli_name(f.name)}", f.name, type=kind,
        default=None if default is None else str(default) if f.metadata.get("sweep") else default,
        show_default=default is not None, help=f.metadata["help"],
    )


def config_options(func: Callable) -> Callable:
    """One click option per `RunConfig` field (the bench's and memory's settings)."""
    for f in reversed(config_fields()):
        func = _config_option(f)(func)
    return func
