#!/usr/bin/env bash
# Partitions and loss in network namespaces (host/benches/partition.rs):
# silent-failure detection after a link goes down, and false drops under
# 20 % loss, with the default chain and with none. Needs root, ip and nft
# (scripts/setup.sh). Usage: benches/partition.sh [RUNS=1]
# Env: SHOAL_BENCH_CUTS (5), SHOAL_BENCH_LOSS_SECS (60). See
# docs/benchmarks.md, "Partitions and loss (network namespaces)".
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
for r in $(seq 1 "$runs"); do
  echo "== run $r of $runs"
  cargo bench -p shoal --bench partition
done
