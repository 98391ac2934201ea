"""``fedprune report``: tables, paired tests and figures from one or more bench outputs.

The work is done by `fedprune.report`, imported when the command runs: pandas, scipy and
matplotlib stay out of ``fedprune --help``. See docs/report.md.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import click


@click.command("report")
@click.argument("outs", metavar="OUT...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@click.option("--baseline", metavar="METHOD", default=None,
              help="Pair every group with this method's runs by seed and test the differences.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex"]), default="md",
              show_default=True, help="Format of the tables printed to stdout.")
@click.option("--last-k", type=click.IntRange(1), default=3, show_default=True,
              help="Average the accuracy over the last K evaluations.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of the tables and figures [default: OUT/report of the first OUT].")
def report(
    outs: tuple[Path, ...], baseline: str | None, fmt: str, last_k: int, output: Path | None
) -> None:
    """Summarize OUT/results.json of `fedprune bench` outputs; several OUTs are merged.

    Prints mean ± std over seeds per (method, target density, options) and, with --baseline,
    paired differences; writes report.md, report.csv, report.tex and the figures to --output.
    """
    from fedprune import report as lib

    outdir = output or lib.results_path(outs[0]).parent / "report"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            records = lib.load_results(outs)
            lib.successful_runs(records)
        except lib.ReportError as exc:
            raise click.ClickException(str(exc)) from None
        if baseline:
            try:
                lib.check_baseline(records, baseline)
            except lib.ReportError as exc:
                raise click.BadParameter(str(exc), param_hint="'--baseline'") from None
        try:
            result = lib.write_report(records, outdir, baseline, last_k, fmt)
        except OSError as exc:
            raise click.ClickException(f"cannot write the report to {outdir}: {exc}") from None
    for message in dict.fromkeys(str(w.message) for w in caught):
        click.echo(f"warning: {message}", err=True)
    click.echo(result.text, nl=False)
    click.echo(f"report: {outdir} ({len(result.files)} files)", err=True)
