"""What the server does around a call for stores that run on a database or an engine.

:class:`StoreBackend` wraps each call of the dispatcher:

- **Spark**: a Spark session is bound to the calling thread. The JVM keeps the
  active session per thread, and the server's workers are threads that never
  started one: store code that asks ``SparkSession.getActiveSession()`` there
  gets None. The session is created once, from the repo's ``spark_conf``, and
  made active on every worker before the call. And calls run one at a time:
  Feast's point-in-time query creates temporary views with fixed names
  (``entity_dataframe``, ``<view>__cleaned``) in the session, so two joins in
  flight in one session read each other's entity rows (seen in Feast 0.67,
  locally too). pyspark's notion of the active session is process-wide, so a
  session per thread is no way out. Each join still runs in parallel on the
  Spark executors; more throughput comes from more flightlab replicas.
- **SQL databases** (PostgreSQL...): the driver's (psycopg's, for Feast's
  store; ADBC's, for flightlab's engine) connection and query errors
  become flightlab errors that say what happened and cross the wire as the
  right Flight class: the database unreachable (``FlightUnavailableError``,
  retry later; also when it shuts down, crashes or ends the connection
  mid-query), the server's credentials refused (a server configuration
  problem), a query that fails or is cancelled (the request's fault).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from flightlab.errors import (
    OfflineStoreCredentialsError,
    OfflineStoreQueryError,
    OfflineStoreUnavailableError,
    shortened,
)

# Words of libpq's messages when the server's credentials are refused.
_REFUSED_CREDENTIALS = ("password authentication failed", "no password supplied", "pg_hba.conf")


class StoreBackend:
    """Per-call set-up and error translation for one offline store's config."""

    def __init__(self, offline_store_config: Any):
        self.config = offline_store_config
        self.kind = getattr(offline_store_config, "type", "")
        self._spark: Any = None
        self._spark_lock = threading.Lock()
        self._spark_calls = threading.Lock()  # one Spark call at a time: see above

    @contextmanager
    def call(self) -> Iterator[None]:
        """Around one call of the store: bind what it needs, translate its errors."""
        try:
            with self._spark_call() if self._is_spark() else nullcontext():
                yield
        except Exception as exc:
            translated = self.translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    # --- Spark ---------------------------------------------------------------

    def _is_spark(self) -> bool:
        return self.kind == "spark" or type(self.config).__name__ == "SparkOfflineStoreConfig"

    @contextmanager
    def _spark_call(self) -> Iterator[None]:
        with self._spark_calls:
            self._bind_spark_session()
            yield

    def _bind_spark_session(self) -> None:
        with self._spark_lock:
            if self._spark is None:
                from feast.infra.offline_stores.contrib.spark_offline_store.spark import (
                    get_spark_session_or_start_new_with_repoconfig,
                )

                self._spark = get_spark_session_or_start_new_with_repoconfig(self.config)
        spark = self._spark
        # The Python-side "active" session is global; the JVM's is per thread.
        spark._jvm.SparkSession.setActiveSession(spark._jsparkSession)

    # --- SQL databases ---------------------------------------------------------

    def translated(self, batches: Iterator[Any]) -> Iterator[Any]:
        """``batches``, a database error raised while reading them translated."""
        items = iter(batches)
        while True:
            try:
                batch = next(items)
            except StopIteration:
                return
            except Exception as exc:
                translated = self.translate(exc)
                if translated is exc:
                    raise
                raise translated from exc
            yield batch

    def translate(self, exc: BaseException) -> BaseException:
        """The flightlab error ``exc`` stands for, or ``exc`` itself."""
        driver_error = _driver_error(exc)
        if driver_error is None:
            return exc
        message = _first_lines(driver_error)
        where = self._where()
        sqlstate = _sqlstate(driver_error, message)
        if sqlstate == _QUERY_CANCELED or sqlstate.startswith(_CONNECTION_ENDED):
            return _intervention_error(sqlstate, where, message)
        if _is_connection_error(driver_error, sqlstate):
            if _is_libpq_stream_error(driver_error):
                return OfflineStoreUnavailableError(
                    f"the offline store's database {where} is unavailable, retry later: "
                    f"it closed the connection midway: {message}"
                )
            if any(words in message for words in _REFUSED_CREDENTIALS):
                return OfflineStoreCredentialsError(
                    f"the offline store's database {where} refused the server's credentials "
                    f"(a server configuration problem): {message}"
                )
            return OfflineStoreUnavailableError(
                f"the offline store's database {where} is unreachable: {message}"
            )
        if _is_query_error(driver_error):
            return OfflineStoreQueryError(
                f"a query failed in the offline store's database {where}: {message}"
            )
        return exc

    def _where(self) -> str:
        host, port = getattr(self.config, "host", None), getattr(self.config, "port", None)
        database = getattr(self.config, "database", None)
        name = f"{self.kind} " if self.kind else ""
        if host is None:
            return f"({name.strip() or 'unknown'})"
        return f"({name}at {host}:{port}, database {database})"


def _driver_error(exc: BaseException) -> BaseException | None:
    """The DB-API error behind ``exc``, if any: itself, SQLAlchemy's ``orig``,
    or one in its chain of causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_dbapi_error(current):
            return current
        orig = getattr(current, "orig", None)  # sqlalchemy.exc.DBAPIError
        if isinstance(orig, BaseException) and _is_dbapi_error(orig):
            return orig
        current = current.__cause__ or current.__context__
    return None


def _is_dbapi_error(exc: BaseException) -> bool:
    # DB-API 2 drivers (psycopg, ADBC's driver manager, ...) name their base
    # class "Error" and subclass it into OperationalError, ProgrammingError...:
    # match by name, so that no driver has to be importable here.
    return _is_libpq_stream_error(exc) or any(
        cls.__name__ == "Error" and cls.__module__.split(".")[0] in _DRIVERS
        for cls in type(exc).__mro__
    )


_DRIVERS = ("psycopg", "psycopg2", "adbc_driver_manager")


def _is_libpq_stream_error(exc: BaseException) -> bool:
    # ADBC's PostgreSQL driver fails a result stream midway (a cancel, the
    # connection ended) with a plain OSError whose text starts "[libpq]": the
    # Arrow stream carries no SQLSTATE.
    return type(exc) is OSError and str(exc).lstrip().startswith("[libpq]")


# What a libpq stream error's text says, as the SQLSTATE it stands for.
_STREAM_ERROR_STATES = (
    ("canceling statement due to", "57014"),
    ("terminating connection due to administrator command", "57P01"),
    ("server closed the connection unexpectedly", "08006"),
    ("no connection to the server", "08003"),
    ("could not receive data from server", "08006"),
)


def _sqlstate(exc: BaseException, message: str) -> str:
    sqlstate = str(getattr(exc, "sqlstate", None) or "")
    if sqlstate or not _is_libpq_stream_error(exc):
        return sqlstate
    for words, state in _STREAM_ERROR_STATES:
        if words in message:
            return state
    return ""


# SQLSTATE class 57, "operator intervention": the database stopped a query or a
# connection on its own (a shutdown, a crash, a cancel), not for anything in
# the request. psycopg raises them as OperationalError with a SQLSTATE, so the
# connection check below does not see them. 57014 is a cancelled statement
# (pg_cancel_backend, statement_timeout): that query failed. Each 57P.. ends
# the connection (57P01 admin shutdown, which pg_terminate_backend sends too;
# 57P02 crash shutdown; 57P03 cannot connect now: starting up, in recovery):
# the database is unavailable for now, and a retry gets a new connection.
_QUERY_CANCELED = "57014"
_CONNECTION_ENDED = "57P"
_SHUTDOWN_REASONS = {
    "57P01": "it shut down, or ended the server's connection (an administrator command)",
    "57P02": "it crashed and is restarting",
    "57P03": "it accepts no connections now (starting up, shutting down or in recovery)",
    "57P04": "its database was dropped",
    "57P05": "it closed the server's idle connection",
}


def _intervention_error(sqlstate: str, where: str, message: str) -> Exception:
    """A class-57 error: a cancelled query, or the database unavailable."""
    if sqlstate == _QUERY_CANCELED:
        hint = ""
        if "statement timeout" in message:
            hint = " (flightlab's engine sets its own with --postgres-statement-timeout)"
        return OfflineStoreQueryError(
            f"a query was cancelled in the offline store's database {where} "
            f"(a statement timeout or a cancel request): {message}{hint}"
        )
    reason = _SHUTDOWN_REASONS.get(sqlstate, f"it ended the connection (SQLSTATE {sqlstate})")
    return OfflineStoreUnavailableError(
        f"the offline store's database {where} is unavailable, retry later: {reason}: {message}"
    )


def _is_connection_error(exc: BaseException, sqlstate: str) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    # A refused or dropped connection is an OperationalError with no SQLSTATE
    # (none came from a server) or a connection-class SQLSTATE (08...); a
    # libpq stream error that names a connection ended.
    if _is_libpq_stream_error(exc):
        return sqlstate.startswith("08")
    return "OperationalError" in names and (not sqlstate or sqlstate.startswith("08"))


def _is_query_error(exc: BaseException) -> bool:
    if _is_libpq_stream_error(exc):
        return "ERROR:" in str(exc)  # a statement failed midway (division by zero...)
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ProgrammingError", "DataError", "IntegrityError"})


# ADBC's messages start with its status ("NOT_FOUND: ", "IO: ") and libpq's
# tag, and end with the statement ("Query was: SELECT ..."): the database's
# own words are what is left.
_ADBC_STATUS = re.compile(
    r"^(?:[A-Z_]+: )?(?:\[libpq\] )?"
    r"(?:Failed to prepare query: |Execution error \[PGRES_FATAL_ERROR\]: )?"
)


def _first_lines(exc: BaseException, lines: int = 2) -> str:
    text = str(exc).strip() or type(exc).__name__
    text = text.split("Query was:", 1)[0].strip()
    text = _ADBC_STATUS.sub("", text, count=1)
    return shortened(" ".join(line.strip() for line in text.splitlines()[:lines]), 600)


def saved_dataset_storage(source: Any) -> Any:
    """Where ``source`` keeps its rows, as a SavedDatasetStorage to persist into.

    Feast's ``SavedDatasetStorage.from_data_source`` knows file, BigQuery,
    Redshift, Snowflake, Spark... sources, not PostgreSQL ones: a table-backed
    PostgreSQLSource maps to a SavedDatasetPostgreSQLStorage of its table.
    """
    from feast.saved_dataset import SavedDatasetStorage

    try:
        return SavedDatasetStorage.from_data_source(source)
    except ValueError:
        if type(source).__name__ != "PostgreSQLSource":
            raise
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
            SavedDatasetPostgreSQLStorage,
        )

        table = source._postgres_options._table
        if not table:
            raise ValueError(
                f"data source {source.name!r} is a query, not a table: nothing to persist into"
            ) from None
        return SavedDatasetPostgreSQLStorage(table_ref=table)
