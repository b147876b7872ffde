#!/usr/bin/env bash
# The whole chain on this machine (issue 5): demo teacher -> distill -> export x86-cpu (FP32, INT8)
# -> bench, with the table committed under benchmarks/results/.
#   bash benchmarks/chain.sh [RUN_DIR]   (reuses RUN_DIR if given, else distils for 10 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/chain}
if [ ! -f "$RUN/student.pt" ]; then
  edgekd distill demo --student lenet5-half --time-budget 10m --eval-data fashion-mnist --out "$RUN"
fi
edgekd export "$RUN" --target x86-cpu --precision fp32 --out bundles/chain-fp32
edgekd export "$RUN" --target x86-cpu --precision int8 --eval-data fashion-mnist --out bundles/chain-int8
edgekd bench bundles/chain-fp32 bundles/chain-int8 --data fashion-mnist --batch-sizes 1,8 --duration 3 \
  --json benchmarks/results/chain.json --markdown benchmarks/results/chain.md --plot benchmarks/results/chain.png
