"""`fedprune report` and `fedprune.report`: tables, paired tests and figures from results.json."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.stats import ttest_rel

from fedprune import report as rp
from fedprune.cli_report import report

ROUNDS = (5, 10, 15, 20)


def record(method, seed, final, *, density=0.2, measured=None, options=None, flat=False,
           history=None, upload=16_170_000, download=18_310_000, total_bytes=3 * 2**20):
    """An ``ok`` run record as the bench writes it; the history rises 1 point per evaluation."""
    config = {"dataset": "digits", "density": density}
    if flat:
        config.update({f"option.{k}": v for k, v in (options or {}).items()})
    else:
        config["options"] = options or {}
    if history is None:
        history = [{"round": r, "accuracy": final - 0.01 * (len(ROUNDS) - 1 - i), "loss": 1.0}
                   for i, r in enumerate(ROUNDS)]
    return {
        "method": method, "seed": seed, "status": "ok", "final_accuracy": final,
        "best_accuracy": max(h["accuracy"] for h in history), "final_loss": 1.0,
        "density": density if measured is None else measured, "upload_bytes": upload,
        "download_bytes": download, "wall_seconds": 1.0, "history": history,
        "memory": {"params_bytes": 1, "activation_bytes": 2, "total_bytes": total_bytes},
        "config": config,
    }


def failed(method, seed, status="failed"):
    return {"method": method, "seed": seed, "status": status, "error": "RuntimeError: boom",
            "config": {"density": 0.2, "options": {}}}


def write_out(path, records):
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(records))
    return path


def only(frame, **where):
    """The one row of ``frame`` whose columns equal ``where``."""
    mask = np.logical_and.reduce([frame[k] == v for k, v in where.items()])
    rows = frame[mask]
    assert len(rows) == 1, rows
    return rows.iloc[0]


# ---------------------------------------------------------------------------------------- table


def test_summary_matches_hand_computation():
    finals = [0.9617, 0.9667, 0.9800]
    histories = [
        [{"round": 20, "accuracy": f}, {"round": 5, "accuracy": 0.5},
         {"round": 15, "accuracy": f - 0.02}, {"round": 10, "accuracy": f - 0.04}]
        for f in finals
    ]
    records = [
        record("fedmef", s, f, history=h, upload=10_000_000 + s * 1_000_000,
               download=2_500_000, total_bytes=(s + 1) * 2**20)
        for s, (f, h) in enumerate(zip(finals, histories, strict=True))
    ]
    row = only(rp.summary_table(records, last_k=3), method="fedmef")
    assert row["n"] == 3
    pct = [100 * f for f in finals]
    assert row["final acc (%) mean"] == pytest.approx(statistics.mean(pct))
    assert row["final acc (%) std"] == pytest.approx(statistics.stdev(pct))  # ddof=1
    assert row["best acc (%) mean"] == pytest.approx(statistics.mean(pct))
    last3 = [statistics.mean([p, p - 2, p - 4]) for p in pct]  # rounds 10, 15, 20
    assert row["last-3 acc (%) mean"] == pytest.approx(statistics.mean(last3))
    assert row["last-3 acc (%) std"] == pytest.approx(statistics.stdev(last3))
    assert row["upload (MB) mean"] == pytest.approx(11.0)  # 1e6 bytes
    assert row["upload (MB) std"] == pytest.approx(1.0)
    assert row["download (MB) mean"] == pytest.approx(2.5)
    assert row["footprint (MiB) mean"] == pytest.approx(2.0)  # 2**20 bytes
    assert row["measured density mean"] == pytest.approx(0.2)


def test_last_k_accuracy():
    history = [{"round": 10, "accuracy": 0.3}, {"round": 5, "accuracy": 0.1},
               {"round": 15, "accuracy": 0.5}]
    assert rp.last_k_accuracy(history, 2) == pytest.approx(0.4)
    assert rp.last_k_accuracy(history, 10) == pytest.approx(0.3)  # all there are
    assert math.isnan(rp.last_k_accuracy([], 3))


def test_one_seed_has_no_std_and_missing_memory_is_nan():
    run = record("feddst", 0, 0.9)
    del run["memory"]
    table = rp.summary_table([run])
    assert table.loc[0, "n"] == 1
    assert math.isnan(table.loc[0, "final acc (%) std"])
    assert math.isnan(table.loc[0, "footprint (MiB) mean"])
    md = rp.format_table(table, "md")
    assert "| 90.00 |" in md.replace("  ", "") and "±" not in md


def test_groups_by_density_and_options_and_skips_failed_runs():
    records = [
        record("feddst", 0, 0.90, density=0.1), record("feddst", 1, 0.91, density=0.1),
        record("feddst", 0, 0.92, density=0.2),
        record("fedmef", 0, 0.93, options={"sap.gamma": 0.7}),
        record("fedmef", 1, 0.94, options={"sap.gamma": 0.7}, flat=True),  # older records
        record("fedmef", 0, 0.95, options={"sap.gamma": 0.5}),
        failed("feddst", 2), failed("fedmef", 2, "interrupted"), failed("fedmef", 3, "diverged"),
    ]
    table = rp.summary_table(records)
    groups = list(zip(table["method"], table["target density"], table["options"], table["n"],
                      strict=True))
    assert groups == [
        ("feddst", 0.1, "", 2), ("feddst", 0.2, "", 1),
        ("fedmef", 0.2, "sap.gamma=0.5", 1), ("fedmef", 0.2, "sap.gamma=0.7", 2),
    ]
    assert only(table, options="sap.gamma=0.7")["final acc (%) mean"] == pytest.approx(93.5)


def test_options_label_is_canonical():
    config = {"option.b.x": 1, "options": {"a.y": "cosine", "c.z": True}}
    assert rp.options_label(config) == "a.y=cosine,b.x=1,c.z=true"
    assert rp.options_label({"density": 0.2}) == ""


def test_format_cells_and_latex():
    records = [record("fedmef", 0, 0.9617), record("fedmef", 1, 0.9717)]
    table = rp.summary_table(records)
    assert "96.67 ± 0.71" in rp.format_table(table, "md")
    latex = rp.format_table(table, "latex")
    assert r"96.67 $\pm$ 0.71" in latex and r"final acc (\%)" in latex
    assert latex.startswith(r"\begin{tabular}")
    csv = rp.format_table(table, "csv").splitlines()
    assert csv[0].startswith("method,target density,options,n,final acc (%) mean,")
    with pytest.raises(rp.ReportError, match="unknown format"):
        rp.format_table(table, "html")


# -------------------------------------------------------------------------------------- paired


def test_paired_differences_match_scipy():
    base = [0.90, 0.91, 0.93, 0.92]
    ours = [0.92, 0.915, 0.95, 0.96, 0.99]  # seed 4 has no baseline run: not paired
    records = [record("feddst", s, a) for s, a in enumerate(base)]
    records += [record("fedmef", s, a) for s, a in enumerate(ours)]
    row = only(rp.paired_differences(records, "feddst", last_k=2), method="fedmef")
    a, b = 100 * np.array(ours[:4]), 100 * np.array(base)
    assert row["baseline"] == "feddst @0.2"
    assert row["n pairs"] == 4
    assert row["Δ final acc (pp) mean"] == pytest.approx(np.mean(a - b))
    assert row["Δ final acc (pp) std"] == pytest.approx(np.std(a - b, ddof=1))
    assert row["p (final acc)"] == pytest.approx(ttest_rel(a, b).pvalue)
    # the history rises by 1 point per evaluation: last-2 accuracy is final - 0.5 points
    assert row["Δ last-2 acc (pp) mean"] == pytest.approx(np.mean(a - b))
    assert row["p (last-2 acc)"] == pytest.approx(ttest_rel(a - 0.5, b - 0.5).pvalue)


def test_paired_p_value_is_nan_for_one_pair_or_zero_variance():
    records = [record("feddst", s, 0.9 + 0.01 * s) for s in range(3)]
    records += [record("fedmef", s, 0.92 + 0.01 * s) for s in range(3)]  # always +2 points
    records += [record("fedmef", 0, 0.95, density=0.1), record("feddst", 0, 0.9, density=0.1)]
    table = rp.paired_differences(records, "feddst")
    constant = only(table, **{"target density": 0.2})
    assert constant["Δ final acc (pp) mean"] == pytest.approx(2.0)
    assert math.isnan(constant["p (final acc)"])
    single = only(table, **{"target density": 0.1})
    assert single["n pairs"] == 1 and single["Δ final acc (pp) mean"] == pytest.approx(5.0)
    assert math.isnan(single["Δ final acc (pp) std"]) and math.isnan(single["p (final acc)"])


def test_baseline_group_by_density_options_and_denseness():
    records = [
        record("fedavg", s, 0.97, density=0.2, measured=1.0) for s in range(2)
    ] + [
        record("feddst", s, 0.9, density=0.1) for s in range(2)
    ] + [
        record("fedmef", s, 0.91, density=0.1, options={"sap.gamma": 0.7}) for s in range(2)
    ] + [record("fedmef", 0, 0.91, density=0.5)]
    dense = rp.paired_differences(records, "fedavg")  # dense: any target density
    assert list(dense["baseline"]) == ["fedavg @0.2"] * 3
    sparse = rp.paired_differences(records, "feddst")
    dense_row = only(sparse, method="fedavg")  # a dense method pairs with any target density
    assert dense_row["baseline"] == "feddst @0.1" and dense_row["n pairs"] == 2
    optioned = only(sparse, options="sap.gamma=0.7")  # falls back to the option-less baseline
    assert optioned["baseline"] == "feddst @0.1" and optioned["n pairs"] == 2
    assert only(sparse, **{"target density": 0.5})["baseline"] == ""
    records += [record("feddst", s, 0.92, density=0.3) for s in range(2)]
    both = rp.paired_differences(records, "feddst")
    assert list(both[both["method"] == "fedavg"]["baseline"]) == ["feddst @0.1", "feddst @0.3"]


def test_unknown_baseline_names_the_methods():
    with pytest.raises(rp.ReportError, match="'nope'.*: feddst, fedmef"):
        rp.paired_differences([record("feddst", 0, 0.9), record("fedmef", 0, 0.9)], "nope")


# ------------------------------------------------------------------------------------- loading


def test_merged_outputs_keep_a_duplicate_run_once(tmp_path):
    one = write_out(tmp_path / "a", [record("fedavg", 0, 0.97), record("feddst", 0, 0.90)])
    two = write_out(tmp_path / "b", [record("fedavg", 0, 0.50), record("fedmef", 0, 0.92)])
    records = rp.load_results([one, two / "results.json"])
    assert len(records) == 4
    with pytest.warns(UserWarning, match="fedavg @0.2 seed 0 appears more than once"):
        table = rp.summary_table(records)
    assert list(table["method"]) == ["fedavg", "feddst", "fedmef"]
    assert only(table, method="fedavg")["final acc (%) mean"] == pytest.approx(97.0)


# ----------------------------------------------------------------------------------------- CLI


def invoke(*args):
    return CliRunner().invoke(report, [str(a) for a in args])


def test_cli_merges_outputs_and_writes_every_format(tmp_path):
    one = write_out(tmp_path / "a", [record("feddst", s, 0.90 + 0.01 * s) for s in range(3)])
    two = write_out(tmp_path / "b", [record("fedmef", s, 0.93 + 0.02 * s) for s in range(3)])
    result = invoke(one, two, "--baseline", "feddst", "--last-k", "2")
    assert result.exit_code == 0, result.output
    outdir = one / "report"
    records = rp.load_results([one, two])
    summary = rp.summary_table(records, last_k=2)
    paired = rp.paired_differences(records, "feddst", last_k=2)
    assert result.stdout == rp.render(summary, paired, "md", "feddst")
    assert "last-2 acc (%)" in result.stdout and "feddst @0.2" in result.stdout
    assert (outdir / "report.md").read_text() == result.stdout
    assert r"\begin{tabular}" in (outdir / "report.tex").read_text()
    csv = pd.read_csv(outdir / "report.csv", keep_default_na=False)
    assert list(csv["method"]) == ["feddst", "fedmef"]
    assert csv["final acc (%) mean"].tolist() == pytest.approx([91.0, 95.0])
    assert pd.read_csv(outdir / "paired.csv")["n pairs"].tolist() == [3]
    for name in rp.FIGURES:
        assert (outdir / f"{name}.png").is_file() and (outdir / f"{name}.svg").is_file()


@pytest.mark.parametrize("fmt", ["csv", "latex"])
def test_cli_prints_the_chosen_format(tmp_path, fmt, monkeypatch):
    monkeypatch.setattr(rp, "figures", lambda records: {})  # drawn in the other tests
    out = write_out(tmp_path / "out", [record("feddst", 0, 0.9)])
    result = invoke(out, "--format", fmt, "--output", tmp_path / "elsewhere")
    assert result.exit_code == 0, result.output
    summary = rp.summary_table(rp.load_results([out]))
    assert result.stdout == rp.render(summary, None, fmt)
    assert (tmp_path / "elsewhere" / "report.md").is_file()
    assert not (out / "report").exists()


def _unreadable(path):
    (path / "results.json").mkdir(parents=True)


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (None, [], "results.json does not exist"),
        (_unreadable, [], "cannot read"),
        (lambda p: write_out(p, []).joinpath("results.json").write_bytes(b"\xff\xfe["),
         [], "cannot read"),
        (lambda p: write_out(p, []).joinpath("results.json").write_text("[{"),
         [], "is not valid JSON"),
        (lambda p: write_out(p, {"method": "fedavg"}), [], "is not a list of run records"),
        (lambda p: write_out(p, [failed("feddst", 0), failed("fedmef", 0, "diverged")]), [],
         "no successful runs to report (2 records: 1 failed, 1 diverged)"),
        (lambda p: write_out(p, [record("feddst", 0, 0.9), record("fedmef", 0, 0.9)]),
         ["--baseline", "fedmeff"],
         "unknown baseline method 'fedmeff'; methods with successful runs: feddst, fedmef"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, make, args, message):
    out = tmp_path / "out"
    if make:
        make(out)
    result = invoke(out, *args)
    assert result.exit_code in (1, 2)
    assert isinstance(result.exception, SystemExit)  # no traceback
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0], result.output


def test_cli_import_is_light():
    code = (
        "import sys, fedprune.cli_report; "
        "heavy = {'pandas', 'matplotlib', 'scipy', 'torch', 'mlflow'}; "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------- figures


@pytest.fixture
def bench_records():
    """fedavg (dense), feddst at two densities, fedmef with an option; 3 seeds, one failure."""
    records = []
    for s in range(3):
        records.append(record("fedavg", s, 0.97 + 0.01 * s, measured=1.0, total_bytes=2**21))
        for density in (0.1, 0.2):
            records.append(record("feddst", s, 0.90 + density / 10 + 0.004 * s * s,
                                  density=density, upload=int(20e6 * density)))
        records.append(record("fedmef", s, 0.93 - 0.01 * s, options={"sap.gamma": 0.7},
                              total_bytes=2**20 // 2))
    return [*records, failed("fedmef", 3)]


def test_accuracy_vs_round_plots_the_means_and_bands(bench_records):
    curves = rp.round_curves(bench_records)
    figure = rp.plot_accuracy_vs_round(curves)
    ax = figure.axes[0]
    assert [line.get_label() for line in ax.lines] == [
        "fedavg @0.2", "feddst @0.1", "feddst @0.2", "fedmef @0.2 [sap.gamma=0.7]"]
    feddst = [r for r in bench_records if r["method"] == "feddst"
              and r["config"]["density"] == 0.1]
    for i, rnd in enumerate(ROUNDS):
        values = [100 * r["history"][i]["accuracy"] for r in feddst]
        mean, std = statistics.mean(values), statistics.stdev(values)
        line = ax.lines[1]
        assert line.get_xdata()[i] == rnd and line.get_ydata()[i] == pytest.approx(mean)
        band = ax.collections[1].get_paths()[0].vertices
        at = band[band[:, 0] == rnd][:, 1]
        assert (at.min(), at.max()) == pytest.approx((mean - std, mean + std))
    assert ax.get_xlabel() == "round" and ax.get_ylabel() == "test accuracy (%)"


def test_accuracy_vs_density_plots_error_bars_and_a_dense_line(bench_records):
    figure = rp.plot_accuracy_vs_density(rp.run_table(bench_records))
    ax = figure.axes[0]
    dense = [100 * r["final_accuracy"] for r in bench_records if r["method"] == "fedavg"]
    assert ax.lines[0].get_label() == "fedavg (dense)"
    assert list(ax.lines[0].get_ydata()) == pytest.approx([statistics.mean(dense)] * 2)
    bars = {c.get_label(): c for c in ax.containers}
    assert set(bars) == {"feddst", "fedmef [sap.gamma=0.7]"}
    feddst = bars["feddst"]
    assert list(feddst.lines[0].get_xdata()) == [0.1, 0.2]  # one point per density
    for x, segment in zip((0.1, 0.2), feddst.lines[2][0].get_segments(), strict=True):
        values = [100 * r["final_accuracy"] for r in bench_records
                  if r["method"] == "feddst" and r["config"]["density"] == x]
        mean, std = statistics.mean(values), statistics.stdev(values)
        assert list(segment[:, 1]) == pytest.approx([mean - std, mean + std])
    assert list(feddst.lines[0].get_ydata()) == pytest.approx(
        [segment[:, 1].mean() for segment in feddst.lines[2][0].get_segments()])
    assert ax.get_xlabel().startswith("target density")


def test_bar_heights_are_the_table_means(bench_records):
    summary = rp.summary_table(bench_records)
    footprint = rp.plot_footprint(summary).axes[0]
    heights = [p.get_height() for p in footprint.patches]
    assert heights == pytest.approx([2.0, 3.0, 3.0, 0.5])  # MiB
    labels = [t.get_text() for t in footprint.get_xticklabels()]
    assert labels == ["fedavg @0.2", "feddst @0.1", "feddst @0.2", "fedmef @0.2 [sap.gamma=0.7]"]
    communication = rp.plot_communication(summary).axes[0]
    upload, download = communication.containers
    assert [p.get_height() for p in upload] == pytest.approx([16.17, 2.0, 4.0, 16.17])
    assert [p.get_height() for p in download] == pytest.approx([18.31] * 4)
    assert [p.get_y() for p in download] == pytest.approx([16.17, 2.0, 4.0, 16.17])  # stacked
    assert communication.get_ylabel() == "communication (MB)"


def test_figure_files_are_valid_and_reproducible(bench_records, tmp_path):
    from matplotlib.image import imread

    paths = rp.make_figures(bench_records, tmp_path / "one")
    assert sorted(p.name for p in paths) == sorted(
        f"{name}.{ext}" for name in rp.FIGURES for ext in ("png", "svg"))
    again = rp.make_figures(bench_records, tmp_path / "two")
    for path, other in zip(paths, again, strict=True):
        assert path.read_bytes() == other.read_bytes(), path.name
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert imread(path).ndim == 3
        else:
            assert ET.parse(path).getroot().tag.endswith("svg")


def test_options_every_run_shares_are_left_out_of_labels():
    records = [record(m, s, 0.9, options={"cosine.interval": 5, "sap.gamma": g})
               for m, g in (("feddst", 0.5), ("fedmef", 0.7)) for s in range(2)]
    table = rp.summary_table(records)
    assert sorted(table["options"]) == ["sap.gamma=0.5", "sap.gamma=0.7"]
    same = [record("fedmef", s, 0.9, options={"cosine.interval": 5}) for s in range(2)]
    assert list(rp.summary_table(same)["options"]) == [""]
