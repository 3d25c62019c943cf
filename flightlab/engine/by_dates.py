"""Entity-less retrievals: ``get_historical_features`` by dates, with no entity rows.

Feast 0.67 answers ``get_historical_features(features=..., start_date=...,
end_date=...)`` on its file (dask) store with one snapshot at ``end_date``:
one entity row ``event_timestamp = end_date``, joined with each feature view
on *no* key, that is a cross join. For each view it keeps, per value of the
view's join keys (null is a value), the row with the greatest event timestamp
among those in ``[end_date - ttl, end_date]`` (``<= end_date`` without a TTL)
or with no timestamp; the answer is the cross product of those winners, every
row stamped ``end_date``. ``start_date`` does not change the answer. Feast's
duckdb store has no such mode (it raises ``TypeError``), so the dask store's
answer is the one reproduced here, exactly, on every source the engine reads:

- views in order of first reference, each projection a view of its own;
  columns ``event_timestamp``, then per view its join keys (through
  ``join_key_map``) and its features (``view__feature`` with full names);
- a join key already in the answer (two views on one entity) is not joined:
  pandas names the second copy ``key__`` and the view's winner is its latest
  row over all keys; a third copy is the dask store's ``ValueError``
  (duplicate column names), raised here before any row is read;
- a source with no rows joins as one all-null row; a source whose rows all
  fall outside the window empties the whole answer;
- a tz-naive event timestamp column with no timestamp to convert is the dask
  store's ``TypeError``;
- types as :mod:`~flightlab.engine.by_dates_types` says; rows ordered by the
  last view's event timestamp (nulls first), ties as a stable sort leaves them.

Per view, one aggregate scan measures what the types and errors depend on,
then its winners are kept in a table of the request's database; their counts
give the answer's size and its ``null``-typed columns before the cross
product streams. Sources are read only through their
:class:`~flightlab.engine.reading.SourceReader`.

What the dask store leaves undefined is not reproduced: which of two rows of
one key with the same event timestamp it keeps, and the order of rows it
sorts as equal (an unstable sort). Where the engine cannot give the dask
store's answer (:class:`~flightlab.engine.by_dates_types.CannotReproduce`:
a folder of parquet files or a file dask splits, which it reads as several
partitions; a zone-aware nanosecond timestamp finer than a microsecond; a
pandas extension dtype or a column type it does not map; a feature or
timestamp column named like an earlier column), :func:`answer_by_dates`
returns None and Feast's store answers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
from feast.feature_view import FeatureView
from feast.infra.offline_stores.file_source import FileSource
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig

from flightlab.engine.by_dates_sql import (
    EVENT_TIMESTAMP,
    ViewPart,
    answer_sql,
    keep_winners,
    measure,
    nanoseconds_since_epoch,
)
from flightlab.engine.by_dates_types import (
    CannotReproduce,
    ColumnType,
    check_nanoseconds,
    check_timestamp,
    conformed,
    dask_type,
    pandas_dtypes,
    source_schema,
    with_pandas_metadata,
)
from flightlab.engine.database import RequestDatabases
from flightlab.engine.on_demand import with_on_demand_features
from flightlab.engine.reading import SourceReader, TimeWindow
from flightlab.engine.results import FLIGHTLAB, ResultStream
from flightlab.engine.settings import EngineMode
from flightlab.engine.sources import source_reader
from flightlab.errors import OnDemandFeatureError

DEFAULT_WINDOW = timedelta(days=30)  # Feast's start date without a TTL
# Feast's stores that have no entity-less mode, and those whose answer this is.
NO_DATE_RANGE_STORES = ("duckdb",)
DASK_STORES = ("file", "dask")


def date_range(
    feature_views: list[FeatureView], start_date: datetime | None, end_date: datetime | None
) -> tuple[datetime, datetime]:
    """(start, end) as Feast's stores compute them for an entity-less call
    (``utils.compute_non_entity_date_range``): a missing end is now, in UTC; a
    missing start is the end minus the largest TTL of the views (whole
    seconds), or 30 days; a naive date is UTC."""
    end = _aware(end_date) if end_date is not None else datetime.now(UTC)
    if start_date is not None:
        return _aware(start_date), end
    ttls = [int(v.ttl.total_seconds()) for v in feature_views if isinstance(v.ttl, timedelta)]
    longest = max((t for t in ttls if t), default=0)
    return end - (timedelta(seconds=longest) if longest > 0 else DEFAULT_WINDOW), end


def by_dates_readers(
    config: RepoConfig, feature_views: list[FeatureView], mode: EngineMode
) -> list[SourceReader] | None:
    """The readers of the views' sources when the engine answers an
    entity-less retrieval on a repo of ``config``; None when Feast's store does.

    ``feast``: never the engine. ``flightlab``: wherever it reads every source.
    ``auto``: on stores with no entity-less answer of their own (duckdb raises
    TypeError), and on the dask store only for sources it cannot read (its
    answer is the one the engine copies); any other store keeps its own
    answer (PostgreSQL's, say, is a time series: see the README).
    """
    if mode is EngineMode.FEAST:
        return None
    readers = [source_reader(v.batch_source, config, EngineMode.FLIGHTLAB) for v in feature_views]
    if any(reader is None for reader in readers):
        return None
    store_type = config.offline_store.type
    if mode is EngineMode.FLIGHTLAB or store_type in NO_DATE_RANGE_STORES:
        return readers  # type: ignore[return-value]
    if store_type in DASK_STORES and not all(
        isinstance(v.batch_source, FileSource) for v in feature_views
    ):
        return readers  # type: ignore[return-value]
    return None


def _on_demand(batches, schema, on_demand_views, feature_refs, full_feature_names):
    """The on-demand outputs, computed by Feast's own code as the file store
    computes them on its answer. A view that reads request data fails there
    with a KeyError (a retrieval without entity rows has none): so it does here."""
    try:
        return with_on_demand_features(
            batches, schema, on_demand_views, feature_refs, full_feature_names
        )
    except OnDemandFeatureError as exc:
        if isinstance(exc.__cause__, KeyError):
            raise KeyError(
                f"{exc} (a retrieval without entity rows has no request data; the file "
                "store fails with this KeyError too)"
            ) from exc.__cause__
        raise


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def answer_by_dates(
    databases: RequestDatabases,
    feature_views: list[FeatureView],
    readers: list[SourceReader],
    feature_refs: list[str],
    on_demand_views: list[OnDemandFeatureView],
    full_feature_names: bool,
    end_date: datetime,
) -> ResultStream | None:
    """The dask store's answer to an entity-less retrieval at ``end_date``
    (as :func:`date_range` gives it), streamed; None where the engine cannot
    give it. Raises the dask store's ``ValueError``, ``TypeError`` and
    ``KeyError`` where it fails."""
    if any(v.mode == "substrait" for v in on_demand_views):
        return None  # Feast computes those inside its own query
    end_ns = nanoseconds_since_epoch(_aware(end_date))
    database, close = databases.open()
    try:
        try:
            views, fields = _plan(
                database, feature_views, readers, feature_refs, on_demand_views,
                full_feature_names, end_ns,
            )  # fmt: skip
            schema, total_rows = keep_winners(database, views, fields)
            extensions = {name: kind.extension for name, kind in fields if kind.extension}
            schema = with_pandas_metadata(schema, extensions)
        except CannotReproduce:
            close()
            return None
        query = answer_sql(views, end_ns)
        _, batches = databases.read(database, query)
        batches = (conformed(batch, schema) for batch in batches)
        if on_demand_views:
            batches, schema = _on_demand(
                batches, schema, on_demand_views, feature_refs, full_feature_names
            )
    except BaseException:
        close()
        raise
    return ResultStream(schema, iter(batches), FLIGHTLAB, total_rows=total_rows, close=close)


# --- the plan -------------------------------------------------------------------------


def _plan(
    database: duckdb.DuckDBPyConnection,
    feature_views: list[FeatureView],
    readers: list[SourceReader],
    feature_refs: list[str],
    on_demand_views: list[OnDemandFeatureView],
    full_feature_names: bool,
    end_ns: int,
) -> tuple[list[ViewPart], list[tuple[str, ColumnType]]]:
    """Each view's part, in the order the dask store joins them, and the
    answer's columns with their types (before the ``null`` rule)."""
    on_demand = {v.projection.name_to_use() for v in on_demand_views}
    order: dict[int, list[str]] = {}  # view index -> features, in order of first reference
    for ref in feature_refs:
        prefix, feature = ref.split(":", 1)
        found = prefix in on_demand
        for index, view in enumerate(feature_views):
            if view.projection.name_to_use() == prefix:
                order.setdefault(index, []).append(feature)
                found = True
        if not found:
            raise ValueError(f"Could not find feature view from reference {ref}")
    fields: list[tuple[str, ColumnType]] = [
        (EVENT_TIMESTAMP, ColumnType(pa.timestamp("ns", tz="UTC")))
    ]
    views = []
    rows_so_far = True  # whether the answer has rows when this view is joined
    for index, features in order.items():
        view, reader = feature_views[index], readers[index]
        part, has_rows = _view_part(
            database, view, reader, features, full_feature_names, fields, end_ns, rows_so_far
        )
        views.append(part)
        rows_so_far = rows_so_far and has_rows
    return views, fields


def _view_part(
    database: duckdb.DuckDBPyConnection,
    view: FeatureView,
    reader: SourceReader,
    features: list[str],
    full_feature_names: bool,
    fields: list[tuple[str, ColumnType]],
    end_ns: int,
    rows_so_far: bool,
) -> tuple[ViewPart, bool]:
    """A view's part; adds its columns to ``fields``. Also whether the answer
    still has rows after it (a non-empty source with no row in the window
    leaves none)."""
    source = view.batch_source
    # The dask store renames the source's columns three times, with pandas'
    # rename (entries naming a missing column are ignored): field_mapping, the
    # projection's join_key_map, then features to their output names.
    prefix = view.projection.name_to_use()
    outputs = [f"{prefix}__{f}" if full_feature_names else f for f in features]
    names = {c: c for c in reader.column_names(database)}  # current name -> source column
    for mapping in (
        source.field_mapping or {},
        view.projection.join_key_map or {},
        dict(zip(features, outputs, strict=True)),
    ):
        names = {mapping.get(current, current): column for current, column in names.items()}

    def source_of(column: str) -> str:
        if column not in names:
            raise KeyError(
                f"feature view {view.name!r}: its source ({reader.description}) has no "
                f"column {column!r}; it has {sorted(names)}"
            )
        return names[column]

    timestamp = source_of(source.timestamp_field)
    created = (
        source_of(source.created_timestamp_column) if source.created_timestamp_column else None
    )
    join_keys = [view.projection.join_key_map.get(c.name, c.name) for c in view.entity_columns]
    present = [name for name, _ in fields]
    hidden = f"__{EVENT_TIMESTAMP}" if source.timestamp_field == EVENT_TIMESTAMP else None
    for column in (hidden or source.timestamp_field, source.created_timestamp_column):
        if column and column in present:
            # The dask store would sort and filter on the earlier column.
            raise CannotReproduce(f"the timestamp column {column!r} is named like an earlier one")
    # pandas' merge (suffixes "", "__"): a column named like one the answer has
    # is renamed with "__"; the dedup still groups by the earlier one.
    renamed = {}
    for column in [*join_keys, *outputs]:
        if column in present and column not in join_keys:
            raise CannotReproduce(f"the feature column {column!r} is named like an earlier one")
        renamed[column] = column + "__" if column in present else column
    taken = present + list(renamed.values())
    duplicates = sorted({n for n in taken if taken.count(n) > 1})
    if duplicates:
        # A key shared by three views: pandas keeps both "k__" columns, the dask
        # store's column set multiplies at every step (tens of GB), and
        # pyarrow.Table.from_pandas refuses the frame if it gets that far.
        raise ValueError(f"Duplicate column names found: {duplicates}")

    used = list(dict.fromkeys([timestamp, *([created] if created else [])]))
    used += [source_of(c) for c in [*join_keys, *outputs] if source_of(c) not in used]
    schema = source_schema(reader, database, used)
    for column in (timestamp, created):
        if column:
            check_timestamp(column, schema.field(column).type)
    check_nanoseconds(reader, database, schema, used)
    read = reader.read(database, used, timestamp, TimeWindow())
    measured = measure(database, read, schema, timestamp, view.ttl, end_ns, used)
    naive = schema.field(timestamp).type.tz is None
    if naive and (not rows_so_far or measured["timestamps"] == 0):
        # The dask store makes a naive column UTC value by value; with no value
        # the column stays naive, and comparing it with the entity row fails.
        unit = schema.field(timestamp).type.unit
        raise TypeError(
            f"Invalid comparison between dtype=datetime64[{unit}] and DatetimeArray: the "
            f"tz-naive event timestamp column {timestamp!r} of feature view {view.name!r} "
            "holds no timestamp to compare here (the file store fails the same way)"
        )
    null_row = measured["rows"] == 0 and rows_so_far
    dtypes = pandas_dtypes(schema)
    columns = []
    for column in [*join_keys, *outputs]:
        src = source_of(column)
        kind = dask_type(
            schema.field(src),
            dtypes.get(src),
            measured[f"nulls:{src}"],
            measured.get(f"value_nulls:{src}", False),
            null_row,
        )
        fields.append((renamed[column], kind))
        columns.append((renamed[column], src, kind))
    part = ViewPart(
        read=read,
        timestamp=timestamp,
        created=created,
        ttl=view.ttl,
        partition=[renamed[k] for k in join_keys if renamed[k] == k],
        columns=columns,
        null_row=null_row,
        end_ns=end_ns,
    )
    return part, measured["rows"] == 0 or measured["candidates"] > 0
