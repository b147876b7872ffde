#!/usr/bin/env bash
# The README's main job on the built-in default: distil the shipped Fashion-MNIST LeNet-5 teacher
# into LeNet-5-half with no training data, measuring on the real Fashion-MNIST test set.
set -euo pipefail
VENV=$1
cd "$(dirname "$0")/.."
"$VENV/bin/edgekd" distill demo --student lenet5-half --time-budget "${DEMO_BUDGET:-3m}" \
  --eval-data fashion-mnist --out runs/demo
