#!/usr/bin/env bash
# Set up (scripts/setup.sh), then the main job: every built-in method on the embedded digits.
# Each run writes a new directory out/<date-time> (results.json, mlflow.db, report/), so running
# it again never replaces earlier results. Extra arguments go to `fedprune bench`,
# e.g. scripts/bench.sh --seeds 0,1,2
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fedprune bench --methods fedavg,prunefl,feddst,fedtiny,fedrts,fedmef \
  --output "out/$(date +%Y%m%d-%H%M%S)" "$@"
