#!/usr/bin/env bash
# Install what the PostgreSQL and Spark backends need from the machine's
# package manager, where it is missing: PostgreSQL (Debian 12: 15) and a Java
# runtime for Spark (Debian 12: OpenJDK 17). The Python side (psycopg,
# pyspark) is the `backends` extra that scripts/setup.sh installs.
#
#   bash scripts/backends.sh          # install what is missing; no-op otherwise
#
# Fails (non-zero) when something is missing and cannot be installed: tests
# that need a backend must fail loudly then, not skip.
set -euo pipefail

need=()
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ]; then
    need+=(postgresql)
fi
if ! command -v java >/dev/null 2>&1; then
    need+=(openjdk-17-jre-headless)
fi
if [ ${#need[@]} -eq 0 ]; then
    echo "backends: PostgreSQL ($(pg_bin)) and Java ($(command -v java)) present"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "backends: missing ${need[*]} and no apt-get to install them with" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo -n)
fi
echo "backends: installing ${need[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"
echo "backends: done"
