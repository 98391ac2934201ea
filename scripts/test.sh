#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint, type-check, the example plugin's own tests (against the
# installed package, as its author would run them) and the test suite on two processes.
# Slow tests (-m slow) stay out of the default run. Extra arguments go to the main pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
(cd examples/fedprune-snip && ../../.venv/bin/python -m pytest -q -p no:cacheprovider tests)
exec .venv/bin/python -m pytest -n 2 -m "not slow" "$@"
