#!/usr/bin/env bash
# Create .venv with the pinned CPU torch pair and install fedprune (editable) with its test
# tools, the Flower extra (its fast tests run by default) and the example third-party plugin.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
export PIP_CONSTRAINT="$PWD/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install --quiet -e ".[test,flower]"
if [ -d examples/fedprune-snip ]; then
  .venv/bin/python -m pip install --quiet ./examples/fedprune-snip
fi
