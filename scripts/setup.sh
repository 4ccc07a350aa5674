#!/usr/bin/env bash
# One-time, idempotent machine set-up for building and testing shoal.
# Called by scripts/test.sh (and so by .ci/run); safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1. The pinned toolchain, its wasm32-wasip2 target (the one script that does
#    this, also run by host/build.rs), and rustfmt + clippy for the checks.
scripts/wasm-target.sh
toolchain="${RUSTUP_TOOLCHAIN:-$(sed -n 's/^channel *= *"\([^"]*\)".*/\1/p' rust-toolchain.toml)}"
for component in rustfmt clippy; do
    if ! rustup component list --installed --toolchain "$toolchain" 2>/dev/null | grep -q "^$component"; then
        echo "setup: adding $component to Rust toolchain $toolchain"
        rustup component add "$component" --toolchain "$toolchain"
    fi
done

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

# 3. Apache Tomcat 10.1's jars (Debian's libtomcat10-java: Tribes for the
#    interop tests, host/tests/interop.rs; catalina, catalina-ha and coyote
#    for the embedded Tomcat cluster of the session bench,
#    host/benches/sessions.rs), a JDK (javac), and Redis (redis-server, a
#    primary and a replica started by the session bench; apt does not start
#    the service, the bench runs its own), and Apache httpd (apache2: the
#    mod_proxy_balancer front end with JSESSIONID stickiness that the web
#    tier's tests and bench start in the foreground with their own config,
#    examples/webapp/tests/common/httpd.rs; the Debian service is not used),
#    iproute2 + nftables (`ip` and `nft`: the network namespaces, links
#    and firewall rules of the partition test and bench, host/tests/partition.rs),
#    and dnsmasq (Debian's dnsmasq-base: the binary alone, no system service
#    on port 53; the DNS discovery test, host/tests/dns.rs, starts its own on
#    a loopback port).
#    `apt-get update` only when apt does not know a package yet.
TRIBES_JAR=/usr/share/java/tomcat10-tribes.jar
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show "$@" >/dev/null 2>&1; then
        apt-get update -qq
    fi
    if ! apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
        # a stale package list (a version no longer on the mirror): refresh once
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    fi
}
missing=()
[ -f "$TRIBES_JAR" ] || missing+=(libtomcat10-java)
command -v javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/sbin/apache2 ] || missing+=(apache2)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
[ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null 2>&1 || missing+=(dnsmasq-base)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${missing[*]} (Tomcat, a JDK, Redis, Apache httpd, ip, nft and dnsmasq for the interop, partition, discovery and web tests and benches)"
        apt_install "${missing[@]}"
    else
        echo "setup: ${missing[*]} missing and not installable here (needs root and apt-get);"
        echo "setup: the Tomcat interop tests, the session bench, the web tier and DNS discovery tests will fail until they are installed"
    fi
fi
