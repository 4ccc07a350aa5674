#!/usr/bin/env bash
# One-time, idempotent machine set-up for building and testing shoal.
# Called by scripts/test.sh (and so by .ci/run); safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. The pinned toolchain and its wasm32-wasip2 target. With
#    RUSTUP_AUTO_INSTALL=0, rustup does not add a target listed in
#    rust-toolchain.toml by itself; `rustup toolchain install` does.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "setup: installing the toolchain from rust-toolchain.toml (wasm32-wasip2 target)"
    rustup toolchain install
fi

# 2. Multicast on the loopback interface, for one-machine clusters in tests.
#    shoal pins multicast to lo with IP_MULTICAST_IF (`bind = "127.0.0.1"`),
#    so no route is needed; the MULTICAST flag is set for other tools (Java).
if ! ip link show lo 2>/dev/null | grep -q MULTICAST; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: enabling multicast on lo"
        ip link set lo multicast on || echo "setup: could not enable multicast on lo (continuing)"
    else
        echo "setup: lo has no MULTICAST flag and we are not root; multicast tests may fail"
    fi
fi
