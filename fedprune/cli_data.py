"""``fedprune data``: download the real datasets, decode them once, and show what is there."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from fedprune.data.cache import DecodeCache, cache_dir
from fedprune.data.catalog import DATASETS, get_info, layout_problem, resolve_root, root_origin
from fedprune.errors import FedpruneError

NAMES = click.Choice(sorted(DATASETS))
MISSING = "[red]missing[/]"
ROOT_HELP = "data root (default: $FEDPRUNE_DATA, else ~/.cache/fedprune/data)"


def _loader(name: str):
    return importlib.import_module(f"fedprune.data.{name}")


@click.group("data")
def data() -> None:
    """Download, prepare and inspect the real datasets (CIFAR-10, CINIC-10, TinyImageNet)."""


@data.command("download")
@click.argument("name", type=NAMES)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help=ROOT_HELP)
@click.option(
    "--url",
    help="download from this URL instead of the official one (also $FEDPRUNE_<NAME>_URL)",
)
@click.option("--md5", help="expected MD5 of the archive, replacing the catalog's checksum")
@click.option("--keep-archive", is_flag=True, help="keep the archive after extracting it")
@click.option("--retries", type=click.IntRange(0), default=3, show_default=True,
              help="retries of an interrupted transfer (each resumes where it stopped)")
def download(
    name: str, root: Path | None, url: str | None, md5: str | None, keep_archive: bool,
    retries: int,
) -> None:
    """Download NAME, verify its checksum and extract it under the data root.

    Resumable (an interrupted download continues on the next call) and idempotent (a dataset
    already present is left alone).
    """
    from fedprune.data.download import download_dataset

    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), console=console, transient=True,
    ) as bar:
        task = bar.add_task(f"{name}", total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        try:
            result = download_dataset(
                name, root, url=url, md5=md5, keep_archive=keep_archive, retries=retries,
                progress=progress,
            )
        except FedpruneError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(result.message)


@data.command("prepare")
@click.argument("name", type=NAMES)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help=ROOT_HELP)
def prepare(name: str, root: Path | None) -> None:
    """Decode NAME once into the cache now, so the first run (and parallel workers) need not."""
    started = time.perf_counter()
    try:
        splits = getattr(_loader(name), f"load_{name}")(root)
    except FedpruneError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{get_info(name).title}: {len(splits.train)} training and {len(splits.test)} test "
        f"images ready in the cache ({time.perf_counter() - started:.1f} s)"
    )


def _describe(name: str, root: Path | None) -> tuple[str, str, str, str]:
    """(status, location, images per split, cache state) of one dataset."""
    info = get_info(name)
    base = resolve_root(root)
    try:
        folder, sources = _loader(name).sources(root)
    except FedpruneError as exc:
        folder = base / info.folder
        if not folder.exists() and layout_problem(info, base) is not None:
            return MISSING, str(folder), "-", "-"
        return f"[yellow]unusable[/]: {exc}", str(folder), "-", "-"
    cache = DecodeCache(cache_dir(folder.parent), name)
    counts, states = [], []
    for source in sources.values():
        try:
            key = cache.key(folder, source)
            state = cache.state(source.split, key)
            cached = cache.load(source.split, key, source.shape) if state == "fresh" else None
            n = len(cached[1]) if cached is not None else source.count()
        except FedpruneError as exc:
            return f"[yellow]unusable[/]: {exc}", str(folder), "-", "-"
        counts.append(f"{source.split} {n:,}")
        if state == "fresh":
            mib = cache.nbytes(source.split, key) / 2**20
            states.append(f"{source.split}: built ({mib:,.1f} MiB)")
        else:
            states.append(f"{source.split}: {'outdated' if state == 'stale' else 'not built'}")
    return "[green]present[/]", str(folder), ", ".join(counts), "; ".join(states)


@data.command("info")
@click.argument("name", type=NAMES, required=False)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help=ROOT_HELP)
def info(name: str | None, root: Path | None) -> None:
    """Show each dataset: present or not, where, images per split, and decode-cache state."""
    base = resolve_root(root)
    names = [name] if name else sorted(DATASETS)
    rows = {d: _describe(d, root) for d in names}
    table = Table(title=f"Datasets under {base} ({root_origin(root)})")
    for column in ("dataset", "status", "location", "images", "decode cache"):
        table.add_column(column, overflow="fold")
    for dataset, row in rows.items():
        table.add_row(get_info(dataset).title, *row)
    Console().print(table)
    for dataset, row in rows.items():
        if row[0] == MISSING:
            click.echo(f"to download {dataset}: {get_info(dataset).download_command(base)}")
