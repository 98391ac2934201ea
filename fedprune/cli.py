"""The ``fedprune`` command. Subcommands are imported when they run, so ``fedprune --help`` and
every ``--help`` stay fast (no torch, no mlflow): `LazyGroup` lists them from `COMMANDS`.
"""

from __future__ import annotations

import importlib

import click

from fedprune import cli_common

#: name -> (module, attribute, one-line help shown by ``fedprune --help``)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "bench": ("fedprune.cli_bench", "bench",
              "Train methods on the same data and initial weights; compare them."),
    "data": ("fedprune.cli_data", "data", "Download, prepare and inspect the real datasets."),
    "memory": ("fedprune.cli_memory", "memory",
               "Measure one training step of each method's client (memory footprint)."),
    "plugins": ("fedprune.cli_plugins", "plugins",
                "List installed plugins, their components, methods and options."),
    "report": ("fedprune.cli_report", "report",
               "Tables, paired tests and figures from bench outputs."),
    "ui": ("fedprune.cli_ui", "ui", "Open the MLflow UI of a bench output on 127.0.0.1."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when invoked (or asked for help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attribute, _ = entry
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fedprune")
@click.option("-v", "--verbose", is_flag=True,
              help="Show details: the traceback of a plugin that failed to load.")
def main(verbose: bool) -> None:
    """Compare federated pruning methods on equal terms."""
    cli_common.show_warnings()
    cli_common.VERBOSE = verbose
