#!/usr/bin/env bash
# The README's main job on the built-in default: distil the shipped Fashion-MNIST LeNet-5 teacher
# into LeNet-5-half with no training data (the real test set only measures it), export it for this
# x86 CPU with data-free INT8, and benchmark student against teacher.
set -euo pipefail
VENV=$1
cd "$(dirname "$0")/.."
EDGEKD="$VENV/bin/edgekd"
"$EDGEKD" distill demo --student lenet5-half --time-budget "${DEMO_BUDGET:-3m}" --eval-data fashion-mnist --out runs/demo
"$EDGEKD" export runs/demo --target x86-cpu --precision int8 --eval-data fashion-mnist --out bundles/demo-x86-int8
"$EDGEKD" bench bundles/demo-x86-int8 --data fashion-mnist --duration 2 --plot bundles/demo-x86-int8/bench.png
