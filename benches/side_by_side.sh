#!/usr/bin/env bash
# Tomcat Tribes <-> Tomcat Tribes next to shoal <-> shoal, in one run, with
# shoal/Tomcat ratios and the issue-4 targets (see docs/benchmarks.md,
# "Side by side with Tomcat"). Loopback only; takes about 1–2 minutes.
#
# Needs a JDK 17 and Debian's libtomcat10-java (scripts/setup.sh installs both).
# SIDE_BY_SIDE_JAVA_OPTS adds JVM flags to the Tomcat nodes (default: none).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)" >&2
exec cargo bench -p shoal --bench side_by_side "$@"
