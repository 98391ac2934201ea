"""``fedprune ui OUT``: the MLflow UI of a bench output, on 127.0.0.1, wherever OUT now lives.

MLflow's SQLite store records artifact locations as absolute paths, so a moved or copied output
directory would serve the original's artifacts (or none). Before starting the UI the store's
locations are pointed at ``OUT/mlartifacts`` (only when they point elsewhere).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import click

ARTIFACTS = "mlartifacts"


def relocate(db: Path, artifacts: Path) -> int:
    """Point every experiment and run of ``db`` whose artifacts live under another folder named
    like ``artifacts`` at ``artifacts``; returns the number of rows changed."""
    new = artifacts.resolve().as_uri()
    changed = 0
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT artifact_location FROM experiments").fetchall()
        for (location,) in rows:
            if not location or not location.startswith("file:") or location == new:
                continue
            if not location.rstrip("/").endswith("/" + ARTIFACTS):
                continue
            for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
                cursor = connection.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608
                    f"WHERE substr({column}, 1, ?) = ?",
                    (new, len(location) + 1, len(location), location),
                )
                changed += cursor.rowcount
    return changed


def experiments(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as connection:
        return [(str(i), n) for i, n in connection.execute(
            "SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active' "
            "AND name != 'Default' ORDER BY experiment_id")]


@click.command("ui")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
def ui(out: Path, port: int) -> None:
    """Serve the MLflow UI of OUT (a `fedprune bench` output) on 127.0.0.1 until Ctrl-C."""
    db = out / "mlflow.db"
    if not db.is_file():
        raise click.UsageError(f"{out} has no mlflow.db (was its bench run with --no-tracking?)")
    try:
        relocate(db, out / ARTIFACTS)
        found = experiments(db)
    except sqlite3.Error as exc:
        raise click.ClickException(f"{db} is not a readable MLflow store: {exc}") from None
    url = f"http://127.0.0.1:{port}"
    for experiment_id, name in found:
        click.echo(f"{name}: {url}/#/experiments/{experiment_id}/runs")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
           f"sqlite:///{db.resolve()}", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    proc = subprocess.Popen(cmd)
    try:
        sys.exit(proc.wait())
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(10)
