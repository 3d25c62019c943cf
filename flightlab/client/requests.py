"""The requests Feast's calls on the client become, and the metadata of their jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Optional, Union

import pandas as pd
from feast.data_source import DataSource
from feast.feature_view import FeatureView
from feast.infra.offline_stores import offline_utils
from feast.infra.offline_stores.offline_store import RetrievalMetadata

from flightlab.wire import protocol


def pull_request(
    request_type: type[protocol.PullRequest],
    data_source: DataSource,
    join_key_columns: list[str],
    feature_name_columns: list[str],
    timestamp_field: str,
    created_timestamp_column: Optional[str],
    start_date: Optional[datetime],
    end_date: Optional[datetime],
) -> protocol.PullRequest:
    # The source travels by name (the server resolves it in its registry)
    # and whole, for one the registry does not list (a saved dataset's).
    return request_type(
        data_source_name=data_source.name,
        data_source=data_source.to_proto().SerializeToString(),
        join_key_columns=tuple(join_key_columns),
        feature_name_columns=tuple(feature_name_columns),
        timestamp_field=timestamp_field,
        created_timestamp_column=created_timestamp_column or None,
        start_date=start_date,
        end_date=end_date,
    )


def aliased_projections(feature_views: list[FeatureView]) -> tuple[bytes, ...] | None:
    """The projections that references alone cannot describe (a feature
    service's alias or join key map), for the server to apply them as the
    client's Feast resolved them; None when every view is used as registered."""
    changed = [
        view.projection.to_proto().SerializeToString()
        for view in feature_views
        if view.projection.name_alias or view.projection.join_key_map
    ]
    return tuple(changed) or None


def retrieval_metadata(
    feature_refs: list[str], entity_df: Optional[Union[pd.DataFrame, str]]
) -> RetrievalMetadata:
    if not isinstance(entity_df, pd.DataFrame):
        return RetrievalMetadata(features=feature_refs, keys=[])
    schema = dict(zip(entity_df.columns, entity_df.dtypes, strict=True))
    timestamp_col = offline_utils.infer_event_timestamp_from_entity_df(schema)
    earliest, latest = _time_bounds(entity_df[timestamp_col])
    return RetrievalMetadata(
        features=feature_refs,
        keys=[c for c in entity_df.columns if c != timestamp_col],
        min_event_timestamp=earliest,
        max_event_timestamp=latest,
    )


def _time_bounds(column: pd.Series) -> tuple[datetime, datetime]:
    """The earliest and latest timestamps in UTC. A datetime column's bounds
    are taken as it is: converting it first would copy it (80 MB at 10M rows)."""
    if not pd.api.types.is_datetime64_any_dtype(column):
        column = pd.to_datetime(column, utc=True)
    bounds = [pd.Timestamp(column.min()), pd.Timestamp(column.max())]
    utc = [b.tz_localize("UTC") if b.tzinfo is None else b.tz_convert("UTC") for b in bounds]
    return utc[0].to_pydatetime(), utc[1].to_pydatetime()
