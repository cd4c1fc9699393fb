#!/usr/bin/env bash
# Set up .venv and run the whole test suite (slow tests included), as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n 2 --durations=15 "$@"
