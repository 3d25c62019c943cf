"""A throwaway PostgreSQL server for the tests and the demo, and how Feast reaches it.

:func:`start_postgres` starts a cluster of its own, in a new folder, on a free
loopback port; :meth:`PostgresServer.stop` stops it and removes the folder.
:class:`PostgresServer` says how to connect: as a ``feature_store.yaml`` block
for Feast's postgres offline store and SQL registry, as a psycopg conninfo, or
as a libpq URI (ADBC's). :func:`load_table` loads an Arrow table into it.

The cluster, from Python (:func:`start_cluster`, :func:`stop_cluster`,
:func:`pause_cluster`, :func:`resume_cluster`) or from a shell::

    python -m flightlab.testing.postgres start DIR [PORT]   # initdb + start; prints the port
    python -m flightlab.testing.postgres stop DIR           # stop it and delete DIR
    python -m flightlab.testing.postgres pause DIR          # stop it, keep DIR (the database down)
    python -m flightlab.testing.postgres resume DIR         # start a paused cluster, same port

It listens on 127.0.0.1:PORT (a free port when none is given) and on a Unix
socket in DIR. It trusts the local ``postgres`` user and has a user
``flightlab`` (password ``flightlab``, password auth over TCP) owning a
database ``flightlab``. Small and fast: a test database, not a durable one
(no fsync). PostgreSQL refuses to run as root: as root, the cluster runs as
the ``postgres`` system user (created by the Debian package).

PostgreSQL itself is not installed here: ``bash scripts/backends.sh`` in a
flightlab checkout installs it where missing (or install ``postgresql``).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flightlab.testing.processes import free_port

if TYPE_CHECKING:
    import pyarrow as pa

# The user and database a cluster has.
USER = PASSWORD = DATABASE = "flightlab"
HOST = "127.0.0.1"
# PostgreSQL refuses to run as root: then the cluster belongs to this user.
OWNER = "postgres"
MISSING = (
    "PostgreSQL's server programs (initdb, pg_ctl) are not installed: run "
    "`bash scripts/backends.sh` in a flightlab checkout, or install postgresql"
)
TIMEOUT = 300  # seconds any one PostgreSQL program may take


@dataclass(frozen=True)
class PostgresServer:
    """Where a PostgreSQL server listens and whom it lets in."""

    port: int
    folder: Path | None = None  # the throwaway cluster's folder; None: not ours to stop
    host: str = HOST
    database: str = DATABASE
    user: str = USER
    password: str = PASSWORD

    def conninfo(self) -> str:
        return (
            f"host={self.host} port={self.port} dbname={self.database} "
            f"user={self.user} password={self.password} sslmode=disable"
        )

    def uri(self) -> str:
        """The libpq URI (ADBC's PostgreSQL driver connects with it)."""
        return (
            f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/"
            f"{self.database}?sslmode=disable"
        )

    def registry_url(self) -> str:
        """The SQLAlchemy URL of Feast's SQL registry in this database."""
        return (
            f"postgresql+psycopg://{self.user}:{self.password}@{self.host}:{self.port}/"
            f"{self.database}?sslmode=disable"
        )

    def offline_store_yaml(self) -> str:
        """The ``offline_store:`` block of a repo on Feast's postgres store."""
        return (
            "offline_store:\n"
            "  type: postgres\n"
            f"  host: {self.host}\n"
            f"  port: {self.port}\n"
            f"  database: {self.database}\n"
            f"  user: {self.user}\n"
            f"  password: {self.password}\n"
            # A loopback test cluster has no certificate; Feast defaults to require.
            "  sslmode: disable\n"
        )

    def registry_yaml(self) -> str:
        """The ``registry:`` block of a repo whose registry is in this database."""
        return (
            "registry:\n"
            "  registry_type: sql\n"
            f"  path: {self.registry_url()}\n"
            "  cache_ttl_seconds: 0\n"
        )

    def pause(self) -> None:
        """Stop the throwaway cluster but keep it, to :meth:`resume` it (same port)."""
        if self.folder is not None:
            pause_cluster(self.folder)

    def resume(self) -> None:
        if self.folder is not None:
            resume_cluster(self.folder)

    def stop(self) -> None:
        """Stop the throwaway cluster and delete its folder."""
        if self.folder is not None:
            stop_cluster(self.folder)


def start_postgres(port: int | None = None) -> PostgresServer:
    """Start a throwaway cluster in a new folder under the temp directory.

    Raises :class:`PostgresMissingError` when PostgreSQL is not installed, and
    RuntimeError with PostgreSQL's output when it cannot start: tests that
    need the database must fail then, loudly.
    """
    # Under /tmp, not pytest's tmp folders: the cluster runs as the postgres
    # user, who cannot enter root's private folders.
    folder = Path(tempfile.mkdtemp(prefix="flightlab-pg-"))
    try:
        port = start_cluster(folder, port)
    except BaseException:
        stop_cluster(folder)
        raise
    return PostgresServer(port=port, folder=folder)


# --- the cluster ---------------------------------------------------------------------------


class PostgresMissingError(RuntimeError):
    """PostgreSQL's programs are not on this machine."""


def postgres_bin(debian: Path = Path("/usr/lib/postgresql")) -> Path:
    """The folder of PostgreSQL's programs: Debian's newest, else initdb's on PATH."""
    found = [p for p in debian.glob("*/bin/initdb") if os.access(p, os.X_OK)]
    if found:  # /usr/lib/postgresql/VERSION/bin/initdb
        newest = max(found, key=lambda p: [int(n) for n in p.parts[-3].split(".") if n.isdigit()])
        return newest.parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise PostgresMissingError(MISSING)
    return Path(initdb).resolve().parent


def start_cluster(folder: str | Path, port: int | None = None) -> int:
    """A new cluster in ``folder`` (initdb), started on ``port`` (default: a
    free one), with the ``flightlab`` user and database; returns the port."""
    folder = Path(folder).resolve()
    programs = postgres_bin()
    port = port or free_port(HOST)
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(OWNER)
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    initdb = [programs / "initdb", "-D", folder / "data", "-U", "postgres", "--auth-local=trust"]
    initdb += ["--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"]
    _run(initdb, log=folder / "initdb.log")
    (folder / "port").write_text(f"{port}\n")
    _run_cluster(folder, port)
    psql = programs / "psql" if (programs / "psql").exists() else shutil.which("psql") or "psql"
    _run(
        [psql, "-h", folder, "-p", str(port), "-U", "postgres", "-d", "postgres", "-q"],
        "-v", "ON_ERROR_STOP=1",
        "-c", f"CREATE USER {USER} PASSWORD '{PASSWORD}'",
        "-c", f"CREATE DATABASE {DATABASE} OWNER {USER}",
    )  # fmt: skip
    return port


def stop_cluster(folder: str | Path) -> None:
    """Stop the cluster in ``folder`` (if it runs) and delete the folder."""
    folder = Path(folder).resolve()
    if (folder / "data").is_dir():
        try:
            _pg_ctl(folder, "-m", "fast", "-w", "stop")
        except RuntimeError:
            pass  # not running
    shutil.rmtree(folder, ignore_errors=True)


def pause_cluster(folder: str | Path) -> None:
    """Stop the cluster in ``folder`` and keep it, to :func:`resume_cluster` it."""
    _pg_ctl(Path(folder).resolve(), "-m", "fast", "-w", "stop")


def resume_cluster(folder: str | Path) -> None:
    """Start a paused cluster again, on the port it had."""
    folder = Path(folder).resolve()
    _run_cluster(folder, int((folder / "port").read_text()))


def _run_cluster(folder: Path, port: int) -> None:
    settings = f"-c listen_addresses={HOST} -p {port} -k {folder} -c fsync=off "
    settings += "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50"
    log = folder / "server.log"
    _pg_ctl(folder, "-l", str(log), "-w", "-t", "60", "-o", settings, "start", log=log)


def _pg_ctl(folder: Path, *args: str, log: Path | None = None) -> None:
    _run([postgres_bin() / "pg_ctl", "-D", folder / "data"], *args, shown=log)


def _run(command: list, *args: str, log: Path | None = None, shown: Path | None = None) -> None:
    """Run a PostgreSQL program as the cluster's owner, its output to ``log``
    if given. A failure raises RuntimeError with its output, and the content
    of ``shown`` (the server's log)."""
    argv = [str(part) for part in (*command, *args)]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", OWNER, "--", *argv]
    run = {"stderr": subprocess.STDOUT, "stdin": subprocess.DEVNULL, "timeout": TIMEOUT}
    if log is None:
        done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, **run)
        output = done.stdout
    else:
        with open(log, "w") as sink:
            done = subprocess.run(argv, stdout=sink, **run)
        output = log.read_text(errors="replace")
    if done.returncode != 0:
        if shown is not None and shown.is_file():
            output += shown.read_text(errors="replace")
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{output}")


# --- tables --------------------------------------------------------------------------------


def _pg_type(kind: pa.DataType) -> str:
    """The PostgreSQL name of an Arrow type of the tables this module loads."""
    import pyarrow as pa

    if pa.types.is_timestamp(kind):
        return "timestamptz" if kind.tz else "timestamp"
    names = {
        pa.int64(): "bigint",
        pa.int32(): "integer",
        pa.float32(): "real",
        pa.float64(): "double precision",
        pa.string(): "text",
        pa.large_string(): "text",
        pa.list_(pa.float32()): "real[]",
    }
    try:
        return names[kind]
    except KeyError:
        raise TypeError(f"no PostgreSQL column type for Arrow {kind}") from None


def load_table(server: PostgresServer, name: str, table: pa.Table) -> None:
    """(Re)create table ``name`` with ``table``'s columns (typed as
    :func:`_pg_type` says) and rows, by binary COPY: from Arrow with ADBC's
    ``adbc_ingest`` where its PostgreSQL driver is installed, else row by row
    with psycopg (MNIST's 70,069 rows of 28 ``real[]``: 8.6 s against 18.7 s
    on 2 cores)."""
    types = [_pg_type(f.type) for f in table.schema]
    columns = ", ".join(f'"{f.name}" {kind}' for f, kind in zip(table.schema, types, strict=True))
    create = [f'DROP TABLE IF EXISTS "{name}"', f'CREATE TABLE "{name}" ({columns})']
    try:
        import adbc_driver_postgresql.dbapi as adbc
    except ImportError:
        _load_with_psycopg(server, name, table, create, types)
        return
    # The table is made first, so that its columns have these types, whatever
    # ADBC would make of the Arrow ones; the rows then go in as one COPY.
    with adbc.connect(server.uri(), autocommit=True) as conn, conn.cursor() as cur:
        for statement in create:
            cur.execute(statement)
        cur.adbc_ingest(name, table, mode="append")


def _load_with_psycopg(
    server: PostgresServer, name: str, table: pa.Table, create: list[str], types: list[str]
) -> None:
    """Binary COPY row by row (three times faster than text for MNIST's 28
    ``real[]`` columns)."""
    import psycopg

    names = ", ".join(f'"{n}"' for n in table.column_names)
    with psycopg.connect(server.conninfo()) as conn, conn.cursor() as cur:
        for statement in create:
            cur.execute(statement)
        with cur.copy(f'COPY "{name}" ({names}) FROM STDIN (FORMAT BINARY)') as copy:
            copy.set_types(types)
            for batch in table.to_batches(max_chunksize=4096):
                for row in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                    copy.write_row(row)


# --- the command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flightlab.testing.postgres",
        description="A throwaway PostgreSQL cluster in a folder of its own.",
    )
    parser.add_argument("action", choices=("start", "stop", "pause", "resume"))
    parser.add_argument("dir", type=Path, help="the cluster's folder")
    parser.add_argument("port", type=int, nargs="?", help="start only: the port (default: free)")
    args = parser.parse_args(argv)
    if args.port is not None and args.action != "start":
        parser.error("PORT goes with start only")
    try:
        if args.action == "start":
            print(start_cluster(args.dir, args.port))
        else:
            action = {"stop": stop_cluster, "pause": pause_cluster, "resume": resume_cluster}
            action[args.action](args.dir)
    except RuntimeError as exc:
        print(f"postgres {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
