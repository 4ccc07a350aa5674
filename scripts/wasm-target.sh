#!/usr/bin/env bash
# The one place that makes sure the Rust toolchain in use can build the guest
# components (the wasm32-wasip2 target). Run by scripts/setup.sh and by
# host/build.rs (so `cargo run` works as the first command on a fresh clone).
#
# Which toolchain: $RUSTUP_TOOLCHAIN when set (cargo sets it for build
# scripts, and a user may set it), else the `channel` of rust-toolchain.toml.
# `rustup toolchain install` is not enough inside cargo: under
# RUSTUP_TOOLCHAIN it ignores the targets listed in rust-toolchain.toml, and
# RUSTUP_AUTO_INSTALL=0 keeps rustup from adding them by itself. So the target
# is added explicitly for that toolchain and checked afterwards.
#
# Exit status 0: the target's standard library is there. Otherwise one
# `error:` line on stderr says what failed and which command to run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target=wasm32-wasip2

fail() {
    echo "error: $1" >&2
    exit 1
}

toolchain="${RUSTUP_TOOLCHAIN:-}"
if [ -z "$toolchain" ]; then
    toolchain="$(sed -n 's/^channel *= *"\([^"]*\)".*/\1/p' "$root/rust-toolchain.toml")"
    [ -n "$toolchain" ] || fail "no channel in $root/rust-toolchain.toml"
fi

# The truth: does this toolchain's sysroot hold the target's standard library?
has_target() {
    local sysroot
    if command -v rustup >/dev/null 2>&1; then
        sysroot="$(rustup run "$toolchain" rustc --print sysroot 2>/dev/null)" || return 1
    else
        sysroot="$("${RUSTC:-rustc}" --print sysroot 2>/dev/null)" || return 1
    fi
    [ -d "$sysroot/lib/rustlib/$target/lib" ]
}

has_target && exit 0

# rustup's own output goes to a log; on failure only its error lines are shown.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
quiet_rustup() {
    RUST_BACKTRACE=0 RUSTUP_MAX_RETRIES="${RUSTUP_MAX_RETRIES:-2}" rustup "$@" >"$log" 2>&1 && return 0
    grep -E '^(error|  [0-9]+: )' "$log" | grep -v 'Stack backtrace' | head -n 8 | sed 's/^/  rustup: /' >&2
    return 1
}

if ! command -v rustup >/dev/null 2>&1; then
    fail "the Rust standard library for $target is missing and there is no rustup to add it; install it for your rustc (with rustup: \`rustup target add $target --toolchain $toolchain\`), then build again"
fi

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "shoal: installing Rust toolchain $toolchain with the $target target (one time)" >&2
    quiet_rustup toolchain install "$toolchain" --profile minimal \
        --component rustfmt --component clippy --target "$target" ||
        fail "could not install Rust toolchain $toolchain (no network?); run \`rustup toolchain install $toolchain --target $target\`, then build again"
fi

if ! has_target; then
    echo "shoal: adding the $target target to Rust toolchain $toolchain (one time)" >&2
    quiet_rustup target add "$target" --toolchain "$toolchain" ||
        fail "could not add the $target target (no network?); run \`rustup target add $target --toolchain $toolchain\`, then build again"
fi

has_target || fail "rustup reported success but toolchain $toolchain still has no $target standard library; run \`rustup target add $target --toolchain $toolchain\` and check \`rustup target list --installed --toolchain $toolchain\`"
