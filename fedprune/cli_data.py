"""``fedprune data``: download the real datasets, decode them once, and show what is there."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from fedprune.data import download as dl
from fedprune.data.cache import CorruptCache, DecodeCache, cache_dir
from fedprune.data.catalog import DATASETS, get_info, layout_problem, resolve_root, root_origin
from fedprune.errors import FedpruneError

NAMES = click.Choice(sorted(DATASETS))
MISSING = "[red]missing[/]"
ROOT_HELP = "data root (default: $FEDPRUNE_DATA, else ~/.cache/fedprune/data)"
CACHE_STATES = {"stale": "outdated", "none": "not built"}


def _loader(name: str):
    return importlib.import_module(f"fedprune.data.{name}")


def _checked(check):
    """A click callback running ``check`` on the option's value: a bad value is a usage error."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        try:
            return None if value is None else check(value)
        except FedpruneError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


@click.group("data")
def data() -> None:
    """Download, prepare and inspect the real datasets (CIFAR-10, CINIC-10, TinyImageNet)."""


@data.command("download")
@click.argument("name", type=NAMES)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help=ROOT_HELP)
@click.option(
    "--url", callback=_checked(dl.check_url),
    help="download from this http(s):// or file:// URL instead of the official one (also "
    "$FEDPRUNE_<NAME>_URL)",
)
@click.option("--md5", callback=_checked(dl.check_md5),
              help="expected MD5 of the archive, replacing the catalog's checksum")
@click.option("--keep-archive", is_flag=True, help="keep the archive after extracting it")
@click.option("--retries", type=click.IntRange(0), default=3, show_default=True,
              help="retries of an interrupted transfer (each resumes where it stopped)")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=dl.TIMEOUT,
              show_default=True, metavar="SECONDS",
              help="longest wait to connect or for more data; a second timeout gives up")
@click.option("--max-extract-bytes", type=click.IntRange(1), default=dl.MAX_EXTRACT_BYTES,
              show_default=True, help="refuse an archive that would extract to more bytes")
@click.option("--max-files", type=click.IntRange(1), default=dl.MAX_FILES, show_default=True,
              help="refuse an archive with more members")
def download(
    name: str, root: Path | None, url: str | None, md5: str | None, keep_archive: bool,
    retries: int, timeout: float, max_extract_bytes: int, max_files: int,
) -> None:
    """Download NAME, verify its checksum and extract it under the data root.

    Resumable (an interrupted download continues on the next call) and idempotent (a dataset
    already present is left alone).
    """
    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), console=console, transient=True, disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(f"{name}", total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        try:
            result = dl.download_dataset(
                name, root, url=url, md5=md5, keep_archive=keep_archive, retries=retries,
                timeout=timeout, max_extract_bytes=max_extract_bytes, max_files=max_files,
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
    """(status, location, images per split, cache state) of one dataset, as rich markup."""
    info = get_info(name)
    base = resolve_root(root)
    try:
        folder, sources = _loader(name).sources(root)
    except FedpruneError as exc:
        folder = base / info.folder
        if not folder.exists() and layout_problem(info, base) is not None:
            return MISSING, escape(str(folder)), "-", "-"
        return _unusable(exc, folder)
    cache = DecodeCache(cache_dir(folder.parent), name)
    counts, states = [], []
    for source in sources.values():
        try:
            key = cache.key(folder, source)
            state = cache.state(source.split, key)
            try:
                cached = cache.load(source, key) if state == "fresh" else None
            except CorruptCache as exc:
                cached, state = None, f"unusable ({exc.problem}), decoded again on the next load"
            n = len(cached[1]) if cached is not None else source.count()
        except FedpruneError as exc:
            return _unusable(exc, folder)
        counts.append(f"{source.split} {n:,}")
        if state == "fresh":
            state = f"built ({cache.nbytes(source.split, key) / 2**20:,.1f} MiB)"
        states.append(f"{source.split}: {CACHE_STATES.get(state, state)}")
    return "[green]present[/]", escape(str(folder)), ", ".join(counts), escape("; ".join(states))


def _unusable(exc: Exception, folder: Path) -> tuple[str, str, str, str]:
    return f"[yellow]unusable[/]: {escape(str(exc))}", escape(str(folder)), "-", "-"


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
