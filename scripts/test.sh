#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint and the test suite on two processes.
# Slow tests (-m slow) stay out of the default run. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -n 2 -m "not slow" "$@"
