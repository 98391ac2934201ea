"""Reports on ``fedprune bench`` outputs: a summary table, paired tests and figures.

Runs are grouped by (method, target density, options) over seeds, and only runs with status
``ok`` count: a failed seed would otherwise bias a mean. Several outputs merge into one set of
runs, so methods benched separately can be compared. Accuracies are in percent, differences in
percentage points (pp), communication in MB (1e6 bytes), memory in MiB (2**20 bytes).
See docs/report.md.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedprune.errors import FedpruneError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: The file ``fedprune bench`` writes into its output directory.
RESULTS_FILE = "results.json"
MB = 1e6
MiB = 2**20
FORMATS = ("md", "csv", "latex")
#: A group of runs that differ only by seed.
GROUP = ["method", "target density", "options"]
FINAL = "final acc (%)"
BEST = "best acc (%)"
DENSITY = "measured density"
UPLOAD = "upload (MB)"
DOWNLOAD = "download (MB)"
FOOTPRINT = "footprint (MiB)"
FIGURES = ("accuracy_vs_round", "accuracy_vs_density", "footprint", "communication")
#: Paired differences whose std is below this (in pp) have no variance: the t-test is undefined.
ZERO_VARIANCE = 1e-9
_LATEX_SYMBOLS = {"±": r"$\pm$", "Δ": r"$\Delta$", "<": r"$<$"}
_TEXT_COLUMNS = ("method", "options", "baseline")


class ReportError(FedpruneError):
    """Results that cannot be reported: missing, unreadable, malformed or without a success."""


# ------------------------------------------------------------------------------------- loading


def results_path(out: str | Path) -> Path:
    """The results.json of a bench output directory (or the file itself when given one)."""
    path = Path(out)
    return path if path.suffix == ".json" else path / RESULTS_FILE


def load_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every run record of the given outputs, in order: comparing outputs means merging them."""
    records: list[dict[str, Any]] = []
    for out in paths:
        records += _read_records(results_path(out))
    return records


def _read_records(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path} does not exist: is this a `fedprune bench` output?") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ReportError(f"cannot read {path}: {reason}") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and isinstance(r.get("method"), str) for r in records
    ):
        raise ReportError(f"{path} is not a list of run records (objects with a method)")
    return records


# ---------------------------------------------------------------------------------------- runs


def last_k_column(last_k: int) -> str:
    return f"last-{last_k} acc (%)"


def options_label(config: Mapping[str, Any]) -> str:
    """Component options as a canonical ``key=value,...`` string (values as ``-o`` reads them).

    Reads the ``options`` mapping and, for older results, flattened ``option.<key>`` entries.
    """
    options = _options(config)
    return ",".join(f"{k}={_option_value(v)}" for k, v in sorted(options.items()))


def _option_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def group_key(record: Mapping[str, Any]) -> tuple[str, float, str]:
    """(method, target density, options): what a run's seeds are averaged over."""
    config = record.get("config") or {}
    return record["method"], _number(config.get("density")), options_label(config)


def group_label(method: str, density: float, options: str) -> str:
    """A group's name in legends and tick labels, e.g. ``fedmef @0.2 [sap.gamma=0.7]``."""
    label = f"{method} @{density:g}"
    return f"{label} [{options}]" if options else label


def _number(value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else math.nan


def last_k_accuracy(history: list[dict[str, Any]] | None, last_k: int) -> float:
    """Mean accuracy of the last ``last_k`` evaluations: less noisy than the final one alone."""
    entries = sorted(history or [], key=lambda h: _number(h.get("round")))[-last_k:]
    values = [_number(h.get("accuracy")) for h in entries]
    return float(np.mean(values)) if values else math.nan


def _options(config: Mapping[str, Any]) -> dict[str, Any]:
    options = {k[len("option."):]: v for k, v in config.items() if k.startswith("option.")}
    options.update(config.get("options") or {})
    return options


def _without_constant_options(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies whose ``config.options`` keep only what differs between records: an option every
    run was given with one value says nothing about any group and would only lengthen labels."""
    seen = [{k: _option_value(v) for k, v in _options(r.get("config") or {}).items()}
            for r in records]
    common = set.intersection(*(set(s.items()) for s in seen)) if seen else set()
    out = []
    for record, options in zip(records, seen, strict=True):
        config = {k: v for k, v in (record.get("config") or {}).items()
                  if not k.startswith("option.")}
        config["options"] = {k: v for k, v in _options(record.get("config") or {}).items()
                             if (k, options[k]) not in common}
        out.append({**record, "config": config})
    return out


def successful_runs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``ok`` records, one per (group, seed), options common to all of them left out.

    A run found twice (the same baseline in two merged outputs) would count twice and pair
    ambiguously: the first is kept and a warning names the others.
    """
    ok = _without_constant_options([r for r in records if r.get("status") == "ok"])
    if not ok:
        statuses = pd.Series([str(r.get("status")) for r in records]).value_counts()
        counts = ", ".join(f"{n} {status}" for status, n in statuses.items())
        raise ReportError(f"no successful runs to report ({len(records)} records: {counts})")
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in ok:
        key = (*group_key(record), record.get("seed"))
        if key in seen:
            warnings.warn(
                f"{group_label(*key[:3])} seed {key[3]} appears more than once; the first "
                "run is kept", stacklevel=2,
            )
        else:
            seen[key] = record
    return list(seen.values())


def run_table(records: list[dict[str, Any]], last_k: int = 3) -> pd.DataFrame:
    """One row per successful run: its group, seed and metrics in report units."""
    rows = [
        {**dict(zip(GROUP, group_key(r), strict=True)), "seed": r.get("seed"),
         **_run_metrics(r, last_k)}
        for r in successful_runs(records)
    ]
    return _sort_groups(pd.DataFrame(rows))


def _run_metrics(record: Mapping[str, Any], last_k: int) -> dict[str, float]:
    memory = record.get("memory") or {}
    return {
        FINAL: 100 * _number(record.get("final_accuracy")),
        BEST: 100 * _number(record.get("best_accuracy")),
        last_k_column(last_k): 100 * last_k_accuracy(record.get("history"), last_k),
        DENSITY: _number(record.get("density")),
        UPLOAD: _number(record.get("upload_bytes")) / MB,
        DOWNLOAD: _number(record.get("download_bytes")) / MB,
        FOOTPRINT: _number(memory.get("total_bytes")) / MiB,
    }


def _sort_groups(frame: pd.DataFrame) -> pd.DataFrame:
    """Methods in the order they were benched, then by target density and options."""
    rank = {m: i for i, m in enumerate(dict.fromkeys(frame["method"]))}

    def key(column: pd.Series) -> pd.Series:
        return column.map(rank) if column.name == "method" else column

    order = [c for c in [*GROUP, "seed", "round"] if c in frame]
    return frame.sort_values(order, key=key, kind="stable").reset_index(drop=True)


def _groups(frame: pd.DataFrame):
    """``frame`` grouped by `GROUP`, in its order (a missing target density is a group too)."""
    return frame.groupby(GROUP, sort=False, dropna=False)


def _is_dense(runs: pd.DataFrame) -> bool:
    """Dense runs keep every weight: their target density does not matter."""
    return bool(np.isclose(runs[DENSITY], 1.0).all())


# -------------------------------------------------------------------------------------- tables


def summary_table(records: list[dict[str, Any]], last_k: int = 3) -> pd.DataFrame:
    """Per group: n runs, and the mean and sample std (ddof=1, NaN for one run) of each metric."""
    runs = run_table(records, last_k)
    metrics = [c for c in runs.columns if c not in (*GROUP, "seed")]
    groups = _groups(runs)
    table = groups[metrics].agg(["mean", "std"])
    table.columns = [f"{metric} {stat}" for metric, stat in table.columns]
    table.insert(0, "n", groups.size())
    return table.reset_index()


def round_curves(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Per group and evaluated round: mean, std and n over seeds of the accuracy (%)."""
    rows = [
        {**dict(zip(GROUP, group_key(r), strict=True)), "round": _number(h.get("round")),
         "accuracy": 100 * _number(h.get("accuracy"))}
        for r in successful_runs(records)
        for h in r.get("history") or []
    ]
    if not rows:
        return pd.DataFrame(columns=[*GROUP, "round", "mean", "std", "n"])
    curves = _sort_groups(pd.DataFrame(rows)).groupby([*GROUP, "round"], sort=False, dropna=False)
    return curves["accuracy"].agg(mean="mean", std="std", n="count").reset_index()


def check_baseline(records: list[dict[str, Any]], baseline: str) -> None:
    """Fail early, naming the choices, when ``baseline`` has no successful run."""
    methods = list(dict.fromkeys(r["method"] for r in successful_runs(records)))
    if baseline not in methods:
        raise ReportError(
            f"unknown baseline method {baseline!r}; methods with successful runs: "
            f"{', '.join(methods)}"
        )


def paired_differences(
    records: list[dict[str, Any]], baseline: str, last_k: int = 3
) -> pd.DataFrame:
    """Each group minus the baseline's, paired by seed, in points, with a paired t-test.

    Pairing by seed removes what a seed shares across methods (data split, initial weights),
    so small differences are detectable. The baseline group has the same target density and
    the same options (else none); where either side is dense its target density does not matter,
    so a dense method gets one row per density of a sparse baseline. Groups without a baseline
    group get one row with 0 pairs.
    """
    check_baseline(records, baseline)
    runs = run_table(records, last_k)
    reference = dict(list(_groups(runs[runs["method"] == baseline])))
    dense = _is_dense(runs[runs["method"] == baseline])
    rows = []
    for key, group in _groups(runs[runs["method"] != baseline]):
        for ref_key in _baseline_groups(key, reference, dense or _is_dense(group)) or [None]:
            ref = reference[ref_key] if ref_key else group.iloc[:0]
            pairs = group.merge(ref, on="seed", suffixes=("", " base"))
            row = {**dict(zip(GROUP, key, strict=True)),
                   "baseline": group_label(*ref_key) if ref_key else "", "n pairs": len(pairs)}
            for metric in (FINAL, last_k_column(last_k)):
                row.update(_paired_test(pairs[metric], pairs[f"{metric} base"], metric))
            rows.append(row)
    return pd.DataFrame(rows, columns=_paired_columns(last_k))


def _baseline_groups(key, reference: dict, dense: bool) -> list:
    """The baseline groups that ``key``'s group is compared with (``dense``: either side is)."""
    _, density, options = key
    candidates = [k for k in reference if k[2] == options] or [k for k in reference if not k[2]]
    same_density = [k for k in candidates if k[1] == density]
    return same_density[:1] or (candidates if dense else [])


def _diff_name(metric: str) -> str:
    return f"Δ {metric.removesuffix(' (%)')} (pp)"


def _p_name(metric: str) -> str:
    return f"p ({metric.removesuffix(' (%)')})"


def _paired_columns(last_k: int) -> list[str]:
    stats = []
    for metric in (FINAL, last_k_column(last_k)):
        stats += [f"{_diff_name(metric)} mean", f"{_diff_name(metric)} std", _p_name(metric)]
    return [*GROUP, "baseline", "n pairs", *stats]


def _paired_test(a: pd.Series, b: pd.Series, metric: str) -> dict[str, float]:
    from scipy.stats import ttest_rel

    keep = a.notna() & b.notna()
    a, b = a[keep].to_numpy(), b[keep].to_numpy()
    diff = a - b
    mean = float(diff.mean()) if len(diff) else math.nan
    std = float(diff.std(ddof=1)) if len(diff) >= 2 else math.nan
    testable = len(diff) >= 2 and std > ZERO_VARIANCE
    p = float(ttest_rel(a, b).pvalue) if testable else math.nan
    name = _diff_name(metric)
    return {f"{name} mean": mean, f"{name} std": std, _p_name(metric): p}


# ---------------------------------------------------------------------------------- formatting


def format_table(table: pd.DataFrame, fmt: str) -> str:
    """``md`` and ``latex`` show ``mean ± std`` cells; ``csv`` keeps every number apart."""
    if fmt == "csv":
        return table.to_csv(index=False, float_format="%.6g", lineterminator="\n")
    cells = _display_cells(table)
    align = ["left" if c in _TEXT_COLUMNS else "right" for c in cells.columns]
    if fmt == "md":
        return cells.to_markdown(index=False, colalign=align, disable_numparse=True) + "\n"
    if fmt == "latex":
        spec = "".join(a[0] for a in align)
        text = cells.to_latex(index=False, escape=True, column_format=spec)
        for symbol, latex in _LATEX_SYMBOLS.items():
            text = text.replace(symbol, latex)
        return text
    raise ReportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _display_cells(table: pd.DataFrame) -> pd.DataFrame:
    """Text cells: ``mean ± std`` pairs, formatted p-values, no options column when unused."""
    cells: dict[str, list[str]] = {}
    for column in table.columns:
        values = table[column].tolist()
        if column.endswith(" mean"):
            name = column.removesuffix(" mean")
            stds = table[f"{name} std"].tolist()
            cells[name] = [_mean_std(m, s, name) for m, s in zip(values, stds, strict=True)]
        elif column.startswith("p ("):
            cells[column] = [_p_value(p) for p in values]
        elif column == "target density":
            cells[column] = [f"{d:g}" for d in values]
        elif not column.endswith(" std") and (column != "options" or any(values)):
            cells[column] = [str(v) for v in values]
    return pd.DataFrame(cells)


def _mean_std(mean: float, std: float, name: str) -> str:
    if math.isnan(mean):
        return ""
    spec = f"{'+' if name.startswith('Δ') else ''}.{3 if 'density' in name else 2}f"
    text = format(mean, spec)
    return text if math.isnan(std) else f"{text} ± {format(std, spec.lstrip('+'))}"


def _p_value(p: float) -> str:
    if math.isnan(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def render(
    summary: pd.DataFrame, paired: pd.DataFrame | None, fmt: str, baseline: str | None = None
) -> str:
    """The report's text in ``fmt``: the summary, then the paired differences if any.

    In csv the two tables follow each other, separated by an empty line.
    """
    sections = [("summary: mean ± std over seeds, successful runs only", summary)]
    if paired is not None:
        title = f"paired differences against {baseline or 'the baseline'}, by seed"
        sections.append((title, paired))
    if fmt == "csv":
        return "\n".join(format_table(table, fmt) for _, table in sections)
    heading = "## {}\n\n" if fmt == "md" else "% {}\n"
    return "\n".join(heading.format(title) + format_table(table, fmt) for title, table in sections)


# ------------------------------------------------------------------------------------- figures


def _axes(size: tuple[float, float] = (8.0, 4.5)) -> tuple[Figure, Axes]:
    """A figure on an explicit Agg canvas: no pyplot state, no display, the same on every host."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def plot_accuracy_vs_round(curves: pd.DataFrame) -> Figure:
    """Mean accuracy over seeds at each evaluated round, with a ±std band, per group."""
    from matplotlib.ticker import MaxNLocator

    figure, ax = _axes()
    for key, curve in _groups(curves):
        x, mean, std = curve["round"], curve["mean"], curve["std"]
        (line,) = ax.plot(x, mean, marker=".", label=group_label(*key))
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="round", ylabel="test accuracy (%)", title="accuracy per round (mean ± std)")
    _legend(ax)
    return figure


def plot_accuracy_vs_density(runs: pd.DataFrame) -> Figure:
    """Final accuracy against target density per method (and options).

    A dense method keeps every weight whatever its target density: it is drawn as a horizontal
    line at the mean of all its runs, with a ±std band.
    """
    figure, ax = _axes()
    series = runs.groupby(["method", "options"], sort=False)
    for i, ((method, options), runs_of) in enumerate(series):
        label, color = (f"{method} [{options}]" if options else method), f"C{i % 10}"
        if _is_dense(runs_of):
            mean, std = runs_of[FINAL].mean(), runs_of[FINAL].std()
            ax.axhline(mean, color=color, linestyle="--", label=f"{label} (dense)")
            ax.axhspan(mean - std, mean + std, color=color, alpha=0.15)
        else:
            points = runs_of.groupby("target density")[FINAL].agg(["mean", "std"])
            ax.errorbar(points.index, points["mean"], yerr=points["std"], color=color,
                        marker="o", capsize=3, label=label)
    ax.set(xlabel="target density (fraction of weights kept)", ylabel="final accuracy (%)",
           title="final accuracy against target density (mean ± std)")
    _legend(ax)
    return figure


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:  # runs without a history draw nothing
        ax.legend(fontsize="small")


def _bars(summary: pd.DataFrame) -> tuple[Figure, Axes, np.ndarray]:
    figure, ax = _axes()
    positions = np.arange(len(summary))
    labels = [group_label(*key) for key in summary[GROUP].itertuples(index=False)]
    ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize="small")
    return figure, ax, positions


def plot_footprint(summary: pd.DataFrame) -> Figure:
    """Client training memory footprint per group (mean over seeds)."""
    figure, ax, positions = _bars(summary)
    ax.bar(positions, summary[f"{FOOTPRINT} mean"])
    ax.set(ylabel="memory footprint (MiB)", title="client memory footprint")
    return figure


def plot_communication(summary: pd.DataFrame) -> Figure:
    """Upload stacked under download per group (mean over seeds): the total traffic."""
    figure, ax, positions = _bars(summary)
    upload, download = summary[f"{UPLOAD} mean"], summary[f"{DOWNLOAD} mean"]
    ax.bar(positions, upload, label="upload")
    ax.bar(positions, download, bottom=upload, label="download")
    ax.set(ylabel="communication (MB)", title="communication per run")
    _legend(ax)
    return figure


def figures(records: list[dict[str, Any]]) -> dict[str, Figure]:
    """Every report figure, by name (see `FIGURES`)."""
    summary = summary_table(records)
    return {
        "accuracy_vs_round": plot_accuracy_vs_round(round_curves(records)),
        "accuracy_vs_density": plot_accuracy_vs_density(run_table(records)),
        "footprint": plot_footprint(summary),
        "communication": plot_communication(summary),
    }


def save_figures(drawn: Mapping[str, Figure], outdir: Path) -> list[Path]:
    """Each figure as ``name``.png and ``name``.svg, byte-identical for the same data."""
    import matplotlib

    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    # A fixed salt makes the SVG element ids reproducible; no date, no software version.
    with matplotlib.rc_context({"svg.hashsalt": "fedprune", "svg.fonttype": "path"}):
        for name, figure in drawn.items():
            png, svg = outdir / f"{name}.png", outdir / f"{name}.svg"
            figure.savefig(png, format="png", dpi=150, metadata={"Software": None})
            figure.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
            paths += [png, svg]
    return paths


def make_figures(records: list[dict[str, Any]], outdir: Path) -> list[Path]:
    """Save every figure as PNG and SVG into ``outdir``; return the paths."""
    return save_figures(figures(records), outdir)


# -------------------------------------------------------------------------------------- report


@dataclass
class Report:
    """What `write_report` computed and wrote."""

    summary: pd.DataFrame
    paired: pd.DataFrame | None
    text: str  # the tables in the requested format, as the CLI prints them
    files: list[Path]


def write_report(
    records: list[dict[str, Any]],
    outdir: Path,
    baseline: str | None = None,
    last_k: int = 3,
    fmt: str = "md",
) -> Report:
    """Write the tables in every format and the figures into ``outdir``.

    Files: report.md, report.tex, report.csv (the summary) and, with a baseline, paired.csv;
    the figures as PNG and SVG. Everything is computed before anything is written.
    """
    if fmt not in FORMATS:
        raise ReportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    summary = summary_table(records, last_k)
    paired = paired_differences(records, baseline, last_k) if baseline else None
    texts = {
        "report.md": render(summary, paired, "md", baseline),
        "report.tex": render(summary, paired, "latex", baseline),
        "report.csv": format_table(summary, "csv"),
    }
    if paired is not None:
        texts["paired.csv"] = format_table(paired, "csv")
    drawn = figures(records)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "paired.csv").unlink(missing_ok=True)  # no stale differences from an earlier report
    files = [_write(outdir / name, text) for name, text in texts.items()]
    files += save_figures(drawn, outdir)
    return Report(summary, paired, render(summary, paired, fmt, baseline), files)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
