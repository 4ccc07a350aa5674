#!/usr/bin/env bash
# Runs a README command the way a new user would on a fresh machine, without
# needing one: a fresh clone of this repository's HEAD (committed work only),
# its own target directory, and a private copy of the rustup home that holds
# only the pinned toolchain, without the wasm32-wasip2 target, with
# RUSTUP_AUTO_INSTALL=0. Your own rustup home and target directory are not
# touched.
#
#   scripts/fresh-clone-check.sh                      # cargo run --release -- demo
#   scripts/fresh-clone-check.sh scripts/test.sh      # the test command
#   FRESH_DIR=/tmp/f scripts/fresh-clone-check.sh ... # reuse/keep a directory
#
# Prints the command's output, then whether the target got installed in the
# private rustup home. A full first build takes about 8 minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target=wasm32-wasip2
work="${FRESH_DIR:-$(mktemp -d /tmp/shoal-fresh.XXXXXX)}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"

toolchain="$(sed -n 's/^channel *= *"\([^"]*\)".*/\1/p' "$root/rust-toolchain.toml")"
host_triple="$(rustc -vV | sed -n 's/^host: //p')"
sysroot="$(rustup run "$toolchain" rustc --print sysroot)"

# 1. A rustup home with only the pinned toolchain, target removed.
home="$work/rustup"
if [ ! -d "$home/toolchains/$toolchain-$host_triple" ]; then
    echo "fresh: copying toolchain $toolchain into $home"
    mkdir -p "$home/toolchains"
    cp -a "$(readlink -f "$sysroot")" "$home/toolchains/$toolchain-$host_triple"
    printf 'version = "12"\ndefault_toolchain = "%s-%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
        "$toolchain" "$host_triple" >"$home/settings.toml"
fi
if RUSTUP_HOME="$home" rustup target list --installed --toolchain "$toolchain" | grep -qx "$target"; then
    echo "fresh: removing $target from the copy"
    RUSTUP_HOME="$home" rustup target remove "$target" --toolchain "$toolchain"
fi

# 2. A fresh clone (with ../shared beside it when this checkout has one).
rm -rf "$work/shoal"
git clone --quiet "$root" "$work/shoal"
if [ -d "$root/../shared" ] && [ ! -e "$work/shared" ]; then
    ln -s "$(cd "$root/../shared" && pwd)" "$work/shared"
fi

# 3. The command, as a user would type it, in a clean-ish environment.
cmd=("$@")
[ ${#cmd[@]} -gt 0 ] || cmd=(cargo run --release -- demo)
echo "fresh: running \`${cmd[*]}\` in $work/shoal (RUSTUP_HOME=$home, RUSTUP_AUTO_INSTALL=0)"
status=0
(
    cd "$work/shoal"
    env -u CARGO_TARGET_DIR -u RUSTUP_TOOLCHAIN -u RUSTC -u CARGO \
        RUSTUP_HOME="$home" RUSTUP_AUTO_INSTALL=0 "${cmd[@]}"
) || status=$?

echo "fresh: \`${cmd[*]}\` exited $status"
if RUSTUP_HOME="$home" rustup target list --installed --toolchain "$toolchain" | grep -qx "$target"; then
    echo "fresh: $target is now installed in the private rustup home"
else
    echo "fresh: $target is still missing in the private rustup home"
fi
echo "fresh: directory kept: $work (remove it when done)"
exit "$status"
