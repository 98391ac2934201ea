"""The ordering of the methods on the embedded digits, over seeds and densities, with ablations.

Runs the bench a user would run, as separate benches into one directory each (a bench sweeps
its options over every method, an ablation changes one method only), all with the same seeds:
every bench of a seed shares that seed's partition and initial weights, so differences are
paired. Then ``fedprune report`` over all of them, against ``feddst``: mean ± std and n per
(method, density, options), paired differences and a paired t-test.

Groups:
- ``methods``: fedavg, prunefl, feddst, fedtiny, fedrts, fedmef (the recipes, papers' settings);
- ``no_bae``: fedmef with ``bae.lam=0`` (FedMef without budget-aware extrusion);
- ``no_sap``: fedmef with ``sap.gamma=0`` (SAP keeps every activation: without SAP);
- ``nsconv``: ``feddst+nsconv`` (FedDST on FedMef's BatchNorm-free convolutions);
- ``stats_active``: fedmef with ``nsconv.stats=active`` (NSConv standardises over the active
  weights only, not the authors' choice: an ablation, not a tuning).

Run: ``python benchmarks/ordering.py --output out/ordering`` (5 seeds, densities 0.05, 0.1 and
0.2, 40 rounds: about 45 minutes on 2 cores with ``--threads 1``). An interrupted run resumes
where it stopped (``fedprune bench --resume``); ``--report-only`` rebuilds the report.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "methods": ("fedavg,prunefl,feddst,fedtiny,fedrts,fedmef", ()),
    "no_bae": ("fedmef", ("-o", "bae.lam=0")),
    "no_sap": ("fedmef", ("-o", "sap.gamma=0")),
    "nsconv": ("feddst+nsconv", ()),
    "stats_active": ("fedmef", ("-o", "nsconv.stats=active")),
}


def fedprune(*args: str) -> None:
    code = subprocess.run([sys.executable, "-m", "fedprune", *args]).returncode
    if code:
        raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=Path("out/ordering"))
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--density", default="0.05,0.1,0.2")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--groups", default=",".join(GROUPS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    outputs = []
    for name in args.groups.split(","):
        methods, extra = GROUPS[name]
        out = args.output / name
        outputs.append(str(out))
        if args.report_only:
            continue
        if (out / "bench.json").is_file():  # started before: finished runs are skipped
            fedprune("bench", "--resume", str(out))
            continue
        fedprune("bench", "--methods", methods, "--seeds", args.seeds, "--density", args.density,
                 "--rounds", str(args.rounds), "--threads", str(args.threads), "--no-tracking",
                 "--no-report", "--output", str(out), *extra)
    fedprune("report", *outputs, "--baseline", "feddst", "--output", str(args.output / "report"))



if __name__ == "__main__":
    main()
