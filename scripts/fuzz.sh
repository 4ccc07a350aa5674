#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ one after another, each for a
# bounded time, and prints per target the executions, the corpus size and
# the crashes found. Exit status 1 when a target crashed (its input is in
# fuzz/artifacts/TARGET/), 0 otherwise.
#
# usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET  default 60; TARGET default: every target
#   FUZZ_RSS_MB (2048), FUZZ_MAX_LEN (65536), FUZZ_TIMEOUT (10 s per input)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); not part of
# scripts/test.sh. Without a sanitizer the targets build on the pinned
# toolchain (rust-toolchain.toml), which has the wasm32-wasip2 target the
# host's build script needs for the guests; FUZZ_TOOLCHAIN=nightly runs
# `cargo +nightly fuzz` instead (that nightly needs wasm32-wasip2 too).
# One libFuzzer process at a time, at nice 10. The corpus grows in fuzz/corpus/TARGET (git-ignored), seeded
# from fuzz/corpus-seed/TARGET (committed); logs go to fuzz/logs/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-60}"
[ $# -gt 0 ] && shift
case "$secs" in
'' | *[!0-9]*) echo "error: SECONDS_PER_TARGET must be a number, not '$secs'" >&2; exit 2 ;;
esac
rss="${FUZZ_RSS_MB:-2048}"
max_len="${FUZZ_MAX_LEN:-65536}"
timeout="${FUZZ_TIMEOUT:-10}"
# No sanitizer: shoal has no unsafe code; the fuzz crate's allocator turns
# an oversized allocation into a crash (see fuzz/src/lib.rs). Debug
# assertions and overflow checks on.
flags=(-s none -a)
export CARGO_INCREMENTAL=0
fuzz() {
    nice -n 10 cargo ${FUZZ_TOOLCHAIN:+"+$FUZZ_TOOLCHAIN"} fuzz "$@"
}

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(fuzz list)
fi

# Build first, so a build error is not taken for a crash.
if [ ${#targets[@]} -eq 1 ]; then
    fuzz build "${flags[@]}" "${targets[0]}"
else
    fuzz build "${flags[@]}"
fi

mkdir -p logs
failed=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before="$(ls "artifacts/$t" | sort)"
    log="logs/$t.log"
    echo "== $t: ${secs}s" >&2
    status=0
    fuzz run "${flags[@]}" "$t" "corpus/$t" "corpus-seed/$t" -- \
        -max_total_time="$secs" -rss_limit_mb="$rss" -max_len="$max_len" \
        -timeout="$timeout" -print_final_stats=1 >"$log" 2>&1 || status=$?
    # libFuzzer's last status line: "#RUNS ... corp: N/SIZE ..."
    last="$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)"
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    [ -n "$runs" ] || runs="$(sed -E -n 's/^#([0-9]+).*/\1/p' <<<"$last")"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    corp="$(sed -E -n 's/.* corp: ([0-9]+\/[0-9]+[A-Za-z]*).*/\1/p' <<<"$last")"
    new="$(comm -13 <(echo "$before") <(ls "artifacts/$t" | sort) | grep -E '^(crash|oom|timeout|leak)-' || true)"
    crashes="$(grep -c . <<<"$new" || true)"
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="?"
        new="(exit status $status, see fuzz/$log)"
    fi
    if [ "$crashes" != 0 ]; then
        failed=1
    fi
    summary+=("$(printf '%-14s %12s runs %8s/s  corpus %-14s crashes %s %s' \
        "$t" "${runs:-?}" "${rate:-?}" "${corp:-?}" "$crashes" "$(echo $new)")")
done

echo
printf '%s\n' "fuzz summary (${secs}s per target; -rss_limit_mb=$rss -max_len=$max_len -timeout=$timeout):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
