"""Checks a request must pass before the server's Feast store is called."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flightlab.errors import UnknownFeatureError, UnsupportedQueryError
from flightlab.wire import protocol


def check_entity_query_supported(offline_store: Any, request: protocol.Request) -> None:
    """Name the refusal of ``entity_df_sql`` on a store that cannot run it
    (Feast's file and duckdb stores fail on it with an AttributeError or a
    ValueError about DataFrames)."""
    if not isinstance(request, protocol.GetHistoricalFeatures) or request.entity_df_sql is None:
        return
    from feast.infra.offline_stores.dask import DaskOfflineStore
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStore

    if isinstance(offline_store, (DaskOfflineStore, DuckDBOfflineStore)):
        raise UnsupportedQueryError(
            f"entity_df_sql is not supported by this server's offline store "
            f"({type(offline_store).__name__}): send the entity rows as the table 'entity_df'"
        )


@contextmanager
def named_feature_errors() -> Iterator[None]:
    """Turn Feast's bare KeyError for an unknown feature of a known view into
    :class:`UnknownFeatureError`, a KeyError with the same text."""
    try:
        yield
    except KeyError as exc:
        text = exc.args[0] if len(exc.args) == 1 else None
        if isinstance(text, str) and text.startswith("Feature ") and " not found in " in text:
            raise UnknownFeatureError(text) from None
        raise
