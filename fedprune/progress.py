"""The live display of a bench, as a lifecycle plugin: one progress bar per (method, seed)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from fedprune import hookimpl


class RichProgress:
    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task: TaskID | None = None

    @hookimpl
    def fedprune_bench_start(self, bench):
        self.progress.start()

    @hookimpl
    def fedprune_run_start(self, run):
        self.task = self.progress.add_task(run.run_name, total=run.config.rounds, status="",
                                           completed=run.resumed_from)

    @hookimpl
    def fedprune_round_end(self, run, round, metrics):
        if self.task is None:
            return
        status = f"loss {metrics['train_loss']:.3f}"
        if "accuracy" in metrics:
            status += f"  acc {metrics['accuracy']:.2%}"
        self.progress.update(self.task, completed=round, status=status)

    @hookimpl
    def fedprune_run_end(self, run, result):
        if self.task is not None and result["status"] != "ok":
            why = result.get("error") or f"after round {result.get('round')}"
            self.progress.update(self.task, status=f"[red]{result['status']}: {why[:60]}")
        self.task = None

    @hookimpl
    def fedprune_bench_end(self, bench, results):
        self.progress.stop()
