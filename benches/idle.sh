#!/usr/bin/env bash
# Idle cost: N `shoal run` nodes (multicast on loopback, default chain, API
# off), no traffic; after a 5 s warm-up, the CPU all of them use over
# SECONDS, from /proc/PID/stat (utime + stime), and the first node's RSS.
# Usage: benches/idle.sh [N=1] [SECONDS=20]   (needs a release build:
# cargo build --release; SHOAL_BIN names another binary; SHOAL_IDLE_MEMBERSHIP
# adds lines to [membership], SHOAL_IDLE_EXTRA to the end of each config, e.g.
# SHOAL_IDLE_EXTRA=$'[plugins]\ndefault_chain = false'). Issue #15's
# targets: 1 node <= 0.2 % of a core, 30 nodes <= 5 % in total. See docs/benchmarks.md, "Hot paths".
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1}
secs=${2:-20}
bin=${SHOAL_BIN:-target/release/shoal}
[ -x "$bin" ] || { echo "error: $bin missing; run: cargo build --release" >&2; exit 1; }
dir=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
port=$((46900 + $$ % 50))
for i in $(seq 1 "$n"); do
  cat > "$dir/n$i.toml" <<TOML
[node]
name = "idle$i"
[membership]
kind = "multicast"
port = $port
bind = "127.0.0.1"
${SHOAL_IDLE_MEMBERSHIP:-}
[receiver]
address = "127.0.0.1"
port = 0
[api]
listen = "off"
${SHOAL_IDLE_EXTRA:-}
TOML
  "$bin" run --config "$dir/n$i.toml" > "$dir/n$i.log" 2>&1 &
  pids+=($!)
done
sleep 5
ticks() { local s=0 p; for p in "${pids[@]}"; do s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$s"; }
a=$(ticks)
sleep "$secs"
b=$(ticks)
rss=$(awk '/VmRSS/ {print $2}' "/proc/${pids[0]}/status")
seen=$(grep -c "member added" "$dir/n1.log" || true)
echo "nodes $n: $((b - a)) ticks in ${secs} s = $(awk -v t=$((b - a)) -v s="$secs" 'BEGIN { printf "%.2f", t / s }')% of one core in total; node 1 RSS ${rss} kB, saw ${seen} of $((n - 1)) peers"
