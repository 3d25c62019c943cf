#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and the demo, in a folder of its own.
#
#   bash scripts/postgres.sh start DIR [PORT]   # initdb + start; prints the port
#   bash scripts/postgres.sh stop DIR           # stop it and delete DIR
#   bash scripts/postgres.sh pause DIR          # stop it, keep DIR (tests: the database down)
#   bash scripts/postgres.sh resume DIR         # start a paused cluster again, same port
#
# The cluster listens on 127.0.0.1:PORT (a free port when none is given) and on
# a Unix socket in DIR. It trusts the local `postgres` user and has a user
# `flightlab` (password `flightlab`, password auth over TCP) owning a database
# `flightlab`. PostgreSQL refuses to run as root: as root, the cluster runs as
# the `postgres` system user (created by the Debian package). PostgreSQL is
# installed first where missing (scripts/backends.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 start DIR [PORT] | stop DIR | pause DIR | resume DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1
dir=$(realpath -m "$2")

bash scripts/backends.sh >&2
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

run_cluster() {
    # Small and fast: a test database, not a durable one.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $1 -k $dir -c fsync=off \
            -c synchronous_commit=off -c full_page_writes=off -c max_connections=50" \
        start >&2 || { cat "$dir/server.log" >&2; exit 1; }
}

case "$action" in
start)
    port=${3:-$(free_port)}
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$dir"
    fi
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    echo "$port" >"$dir/port"
    run_cluster "$port"
    as_owner "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
        -c "CREATE USER flightlab PASSWORD 'flightlab'" \
        -c "CREATE DATABASE flightlab OWNER flightlab" >&2
    echo "$port"
    ;;
stop)
    if [ -d "$dir/data" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    fi
    rm -rf "$dir"
    ;;
pause)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2
    ;;
resume)
    run_cluster "$(cat "$dir/port")"
    ;;
*)
    usage
    ;;
esac
