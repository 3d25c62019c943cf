#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and the demo, in a folder of its own.
#
#   bash scripts/postgres.sh start DIR [PORT]   # initdb + start; prints the port
#   bash scripts/postgres.sh stop DIR           # stop it and delete DIR
#   bash scripts/postgres.sh pause DIR          # stop it, keep DIR (tests: the database down)
#   bash scripts/postgres.sh resume DIR         # start a paused cluster again, same port
#
# PostgreSQL is installed first where missing (scripts/backends.sh); the
# cluster itself is flightlab.testing.postgres's (`python -m
# flightlab.testing.postgres ...`, which says what the cluster is).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
    echo "usage: $0 start DIR [PORT] | stop DIR | pause DIR | resume DIR" >&2
    exit 2
fi
bash scripts/backends.sh >&2
python=.venv/bin/python
[ -x "$python" ] || python=python3
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m flightlab.testing.postgres "$@"
