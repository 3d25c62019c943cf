"""Sessions with a postgres offline store's database: one ADBC database per
store config, and a bounded pool of connections per server.

A connection is made as Feast's store makes its own (``_get_conn``): the same
host, port, database, user, password, ``sslmode`` and certificates, and
``search_path`` set to ``db_schema`` (or the user), then ``public``, so an
unqualified table name means the same table. The engine's sessions also run
with ``jit = off`` (compiling cost more than it saved for the point-in-time
probes), autocommit (a failed statement would otherwise poison the next), an
``application_name`` and, when set, a ``statement_timeout``: all as startup
options, which ``DISCARD ALL`` keeps when a session goes back to the pool.

The connection string holds the password: it is never logged, and never part
of a message (libpq's own messages do not quote it).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flightlab.engine.postgres.settings import PostgresSettings
from flightlab.errors import ServerBusyError

logger = logging.getLogger(__name__)

DRIVER = "adbc_driver_postgresql"
# Seconds a new connection may take (a database that does not answer is an
# error, never a hang).
CONNECT_TIMEOUT_S = 10

_warned_missing = threading.Event()


def driver_available() -> bool:
    """Whether ADBC's PostgreSQL driver is installed; warns once when not."""
    try:
        found = importlib.util.find_spec(DRIVER) is not None
    except (ImportError, ValueError):
        found = False
    if not found and not _warned_missing.is_set():
        _warned_missing.set()
        logger.warning(
            "adbc-driver-postgresql is not installed: Feast's postgres store answers "
            "retrievals over PostgreSQLSource (install flightlab's backends extra, or "
            "adbc-driver-postgresql, for flightlab's engine)"
        )
    return found


def where(config: Any) -> str:
    """The database, as messages name it (never its credentials)."""
    return f"(postgres at {config.host}:{config.port}, database {config.database})"


def conninfo(config: Any, settings: PostgresSettings) -> str:
    """libpq's connection string for a Feast ``PostgreSQLConfig``."""
    search_path = (config.db_schema or config.user).strip()
    if search_path != "public":
        search_path += ",public"
    options = f"-c search_path={search_path} -c jit=off"
    if settings.statement_timeout is not None:
        options += f" -c statement_timeout={max(1, round(settings.statement_timeout * 1000))}"
    params = {
        "host": config.host,
        "port": int(config.port),
        "dbname": config.database,
        "user": config.user,
        "password": config.password,
        "sslmode": config.sslmode,
        "sslkey": config.sslkey_path,
        "sslcert": config.sslcert_path,
        "sslrootcert": config.sslrootcert_path,
        "keepalives_idle": getattr(config, "keepalives_idle", None),
        "application_name": settings.application_name,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "options": options,
    }
    return " ".join(f"{key}={_quoted(value)}" for key, value in params.items() if value is not None)


def _quoted(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


class Session:
    """One pooled connection, leased to one request at a time. ``broken()``
    marks it not to be pooled again (an error, a stream left unread)."""

    def __init__(self, pool: SessionPool, connection: Any):
        self._pool = pool
        self.connection = connection
        self._broken = False
        self._released = threading.Lock()

    def cursor(self, batch_bytes: int | None = None, copy: bool = True) -> Any:
        """A cursor; ``batch_bytes`` sets ADBC's batch size hint, ``copy=False``
        runs statements that binary COPY cannot (EXPLAIN, SET)."""
        import adbc_driver_postgresql

        cursor = self.connection.cursor()
        options = {}
        if batch_bytes is not None:
            options[adbc_driver_postgresql.StatementOptions.BATCH_SIZE_HINT_BYTES.value] = str(
                batch_bytes
            )
        if not copy:
            options[adbc_driver_postgresql.StatementOptions.USE_COPY.value] = "false"
        if options:
            cursor.adbc_statement.set_options(**options)
        return cursor

    def execute(self, sql: str) -> None:
        """Run a statement that returns nothing worth reading."""
        cursor = self.cursor(copy=False)
        try:
            cursor.execute(sql)
        finally:
            cursor.close()

    def cancel(self) -> None:
        """Cancel whatever runs on the connection (from any thread)."""
        try:
            self.connection.adbc_cancel()
        except Exception:  # the connection may be gone already
            self._broken = True

    def broken(self) -> None:
        self._broken = True

    def release(self) -> None:
        """Back to the pool (or closed); only the first call counts."""
        if self._released.acquire(blocking=False):
            self._pool.give_back(self.connection, self._broken)


class SessionPool:
    """At most ``settings.pool_size`` connections to one database, idle ones
    reused. New connections share one ADBC database (cheaper than a new one)."""

    def __init__(self, conninfo_text: str, settings: PostgresSettings, where_text: str):
        self._conninfo = conninfo_text  # holds the password: never logged
        self.size = settings.pool_size
        self._wait = settings.pool_wait
        self._where = where_text
        self._idle: list[Any] = []
        self._open = 0  # idle and leased
        self._condition = threading.Condition()
        self._template: Any = None  # a live connection whose ADBC database new ones share
        self._closed = False

    def stats(self) -> dict[str, int]:
        with self._condition:
            return {"open": self._open, "idle": len(self._idle), "size": self.size}

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for the block; an error in it closes the connection."""
        session = self.lease()
        try:
            yield session
        except BaseException:
            session.broken()
            raise
        finally:
            session.release()

    def lease(self) -> Session:
        """An idle connection that still answers, or a new one; waits while
        all ``size`` are leased, then raises ServerBusyError."""
        deadline = time.monotonic() + self._wait
        while True:
            with self._condition:
                connection = self._reserve(deadline)
            if connection is None:
                try:
                    return Session(self, self._connect())
                except BaseException:
                    self._forget(None)
                    raise
            if self._answers(connection):
                return Session(self, connection)
            self._forget(connection)  # dead (the database restarted): try again

    def _reserve(self, deadline: float) -> Any:
        """An idle connection, or None with a place for a new one (under the lock)."""
        while True:
            if self._idle:
                return self._idle.pop()
            if self._open < self.size:
                self._open += 1
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerBusyError(
                    f"all {self.size} connections of the engine to the offline store's "
                    f"database {self._where} stayed in use for {self._wait:g} s; retry "
                    "later, or raise --postgres-pool-size"
                )
            self._condition.wait(remaining)

    def _connect(self) -> Any:
        template = self._template
        if template is not None:
            try:
                connection = template.adbc_clone()
                connection.adbc_connection.set_autocommit(True)
                return connection
            except Exception:
                self._template = None
        import adbc_driver_postgresql.dbapi as dbapi

        connection = dbapi.connect(self._conninfo, autocommit=True)
        self._template = connection
        return connection

    @staticmethod
    def _answers(connection: Any) -> bool:
        try:
            cursor = connection.cursor()
            try:
                cursor.execute("SELECT 1")
                cursor.fetchall()
            finally:
                cursor.close()
            return True
        except Exception:
            return False

    def give_back(self, connection: Any, broken: bool) -> None:
        if not broken and not self._closed:
            try:
                cursor = connection.cursor()
                try:  # drops the request's TEMP tables; keeps the startup options
                    cursor.execute("DISCARD ALL")
                finally:
                    cursor.close()
            except Exception:
                broken = True
        with self._condition:
            if not broken and not self._closed:
                self._idle.append(connection)
                self._condition.notify()
                return
        self._forget(connection)

    def _forget(self, connection: Any) -> None:
        """Close ``connection`` (None: a connection never made) and free its place."""
        if connection is not None:
            if connection is self._template:
                self._template = None
            _close_quietly(connection)
        with self._condition:
            self._open -= 1
            self._condition.notify()

    def close(self) -> None:
        """Close the idle connections; leased ones close when given back."""
        with self._condition:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        self._template = None
        for connection in idle:
            _close_quietly(connection)


def _close_quietly(connection: Any) -> None:
    try:
        connection.close()
    except Exception:
        pass


class Databases:
    """The pools of one engine (one server): one per offline-store config."""

    def __init__(self, settings: PostgresSettings):
        self.settings = settings
        self._pools: dict[str, SessionPool] = {}
        self._lock = threading.Lock()

    def pool(self, config: Any) -> SessionPool:
        text = conninfo(config, self.settings)
        with self._lock:
            pool = self._pools.get(text)
            if pool is None:
                pool = self._pools[text] = SessionPool(text, self.settings, where(config))
            return pool

    def pools(self) -> list[SessionPool]:
        with self._lock:
            return list(self._pools.values())

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
