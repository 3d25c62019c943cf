"""A throwaway PostgreSQL server for the tests and the demo, and how Feast reaches it.

:func:`start_postgres` runs ``scripts/postgres.sh start`` (which installs
PostgreSQL where missing and starts a cluster on a free loopback port, as an
unprivileged user), :meth:`PostgresServer.stop` runs ``stop`` (the cluster and
its folder go). :class:`PostgresServer` says how to connect: as a
``feature_store.yaml`` block for Feast's postgres offline store and SQL
registry, or as a psycopg conninfo.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "postgres.sh"
# The user and database scripts/postgres.sh creates.
USER = PASSWORD = DATABASE = "flightlab"
HOST = "127.0.0.1"


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
            _run_script("pause", str(self.folder))

    def resume(self) -> None:
        if self.folder is not None:
            _run_script("resume", str(self.folder))

    def stop(self) -> None:
        """Stop the throwaway cluster and delete its folder."""
        if self.folder is not None:
            _run_script("stop", str(self.folder))


def start_postgres(port: int | None = None) -> PostgresServer:
    """Start a throwaway cluster (installing PostgreSQL where missing).

    Raises RuntimeError with the script's output when it cannot: tests that
    need the database must fail then, loudly.
    """
    # Under /tmp, not pytest's tmp folders: the cluster runs as the postgres
    # user, who cannot enter root's private folders.
    folder = Path(tempfile.mkdtemp(prefix="flightlab-pg-"))
    arguments = ["start", str(folder)] + ([str(port)] if port else [])
    out = _run_script(*arguments)
    return PostgresServer(port=int(out.strip().splitlines()[-1]), folder=folder)


def _run_script(*arguments: str) -> str:
    done = subprocess.run(
        ["bash", str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,  # a first run may apt-get install PostgreSQL
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"scripts/postgres.sh {' '.join(arguments)} failed ({done.returncode}):\n"
            f"{done.stdout}{done.stderr}"
        )
    return done.stdout


# Arrow types of the tables this module loads, and their PostgreSQL names.
_PG_TYPES = {
    pa.int64(): "bigint",
    pa.int32(): "integer",
    pa.float32(): "real",
    pa.float64(): "double precision",
    pa.string(): "text",
    pa.large_string(): "text",
    pa.list_(pa.float32()): "real[]",
}


def _pg_type(kind: pa.DataType) -> str:
    if pa.types.is_timestamp(kind):
        return "timestamptz" if kind.tz else "timestamp"
    try:
        return _PG_TYPES[kind]
    except KeyError:
        raise TypeError(f"no PostgreSQL column type for Arrow {kind}") from None


def load_table(server: PostgresServer, name: str, table: pa.Table) -> None:
    """(Re)create table ``name`` with ``table``'s columns and rows, by binary COPY
    (three times faster than text for MNIST's 28 ``real[]`` columns)."""
    import psycopg

    types = [_pg_type(f.type) for f in table.schema]
    columns = ", ".join(f'"{f.name}" {kind}' for f, kind in zip(table.schema, types, strict=True))
    names = ", ".join(f'"{n}"' for n in table.column_names)
    with psycopg.connect(server.conninfo()) as conn, conn.cursor() as cur:
        cur.execute(f'DROP TABLE IF EXISTS "{name}"')
        cur.execute(f'CREATE TABLE "{name}" ({columns})')
        with cur.copy(f'COPY "{name}" ({names}) FROM STDIN (FORMAT BINARY)') as copy:
            copy.set_types(types)
            for batch in table.to_batches(max_chunksize=4096):
                for row in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                    copy.write_row(row)
