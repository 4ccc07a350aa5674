#!/usr/bin/env bash
# The whole test suite: set-up, formatting, lints, every test.
# `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The guests are their own workspace, built for wasm32-wasip2.
(cd guests && cargo fmt --all --check &&
    cargo clippy --workspace --locked --target wasm32-wasip2 --target-dir ../target/guests -- -D warnings)
cargo test --workspace --locked
# The placement policies', the phi-accrual detector's and encrypt's settings unit tests (pure Rust, run natively).
(cd guests && cargo test --locked --target "$(rustc -vV | sed -n 's/^host: //p')" \
    --target-dir ../target/guests \
    -p shoal-policy-sdk -p delta-policy -p backup-policy -p zone-policy -p phi-accrual-detector -p encrypt)
