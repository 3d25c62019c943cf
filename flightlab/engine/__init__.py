"""flightlab's own point-in-time engine: DuckDB over the sources it can read.

:class:`Engine` answers ``get_historical_features``, ``pull_latest`` and
``pull_all`` with one DuckDB query per request, streamed as
:class:`ResultStream` batches, and gives Feast's duckdb store's answers.
:class:`EngineSettings` and :class:`EngineMode` say when it answers and with
what resources; anything it cannot answer goes to the repo's Feast store.
Inside: :mod:`~flightlab.engine.sql` (the queries),
:mod:`~flightlab.engine.sources` (which sources it reads),
:mod:`~flightlab.engine.reading` (how a request reads a source),
:mod:`~flightlab.engine.parquet` (local parquet files),
:mod:`~flightlab.engine.object_store` and :mod:`~flightlab.engine.s3`
(parquet in S3),
:mod:`~flightlab.engine.postgres` (PostgreSQL sources, with Feast's postgres
store's answers: the join in PostgreSQL or the window fetched into DuckDB),
:mod:`~flightlab.engine.database` (a DuckDB database per request),
:mod:`~flightlab.engine.entities` (the uploaded entity rows),
:mod:`~flightlab.engine.on_demand` (on-demand views, batch by batch),
:mod:`~flightlab.engine.usage` (open databases, rows read) and
:mod:`~flightlab.engine.runner` (``Engine``).

The exports load on first use: the settings do not import Feast or DuckDB.
"""

from __future__ import annotations

from flightlab._lazy import lazy_exports

__all__ = [
    "FEAST",
    "FLIGHTLAB",
    "Engine",
    "EngineMode",
    "EngineSettings",
    "EngineUsage",
    "OnDemandFeatureError",
    "ResultStream",
]

_LAZY = {
    "FEAST": "flightlab.engine.results",
    "FLIGHTLAB": "flightlab.engine.results",
    "ResultStream": "flightlab.engine.results",
    "Engine": "flightlab.engine.runner",
    "EngineMode": "flightlab.engine.settings",
    "EngineSettings": "flightlab.engine.settings",
    "EngineUsage": "flightlab.engine.usage",
    "OnDemandFeatureError": "flightlab.errors",
}

__getattr__ = lazy_exports(__name__, _LAZY)
