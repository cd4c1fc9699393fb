#!/usr/bin/env bash
# Set up .venv and run the main job: a short real Fashion-MNIST experiment (baseline vs
# Struct-A trained with Structural Regularization, then decomposed) with a comparison table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
