#!/usr/bin/env bash
# The rolling-restart example (issue 12), in one command: builds the node
# CLI, the example web app and the driver (release), then runs both rolls
# against a 3-node cluster of examples/webapp behind Apache httpd under
# user traffic:
#   1. restart: the nodes restarted one at a time onto a new filter .wasm
#      in their config, each waited for (state transfer done) before the
#      next;
#   2. deploy: one `shoal plugin deploy` of the new filter to the whole
#      cluster, then the same rolling restart with the configs unchanged
#      (the deployed version must survive).
# Each prints requests sent, failed after a retry, sessions lost, the roll's
# time and the traffic before/during/after. Exits non-zero if a roll lost a
# session, had a failed request or did not change the filter on every node.
#
#   examples/rolling-restart/run.sh                      # 200 users, 8 threads, 5 s windows
#   examples/rolling-restart/run.sh --users 500 --pre 10 --post 10
#   DEPLOY_TIMING=1 examples/rolling-restart/run.sh      # also the deploy timings
#
# Needs: the Rust toolchain (rust-toolchain.toml; the wasm32-wasip2 target is
# added by the build), Debian's apache2 (scripts/setup.sh), multicast on the
# loopback interface. Everything listens on 127.0.0.1; every process is
# stopped and the temporary directories removed at the end (kept, with the
# node logs, when a roll fails).
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
nice cargo build --release -p shoal -p shoal-webapp -p shoal-rolling-restart
driver="$target/release/rolling-restart"
status=0
for mode in restart deploy; do
    echo
    echo "### rolling-restart --mode $mode $*"
    "$driver" --mode "$mode" "$@" || status=$?
done
if [ "${DEPLOY_TIMING:-0}" = 1 ]; then
    echo
    echo "### rolling-restart --mode deploy-timing"
    "$driver" --mode deploy-timing || status=$?
fi
exit "$status"
