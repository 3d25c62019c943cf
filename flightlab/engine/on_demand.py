"""On-demand feature views, computed on the engine's result batch by batch.

Feast computes them on the whole joined table (``RetrievalJob.to_arrow``);
the engine streams, so it runs the same transformation code on each batch and
appends the requested outputs. A batch's output types are what the
transformation returns on that batch, so the stream's schema is fixed by the
first batch, with one exception: an output that is all nulls there (pandas
gives no type to a column of ``None``) takes the type the view declares, and
every later batch is cast to that schema.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pyarrow as pa
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.types import from_feast_to_pyarrow_type

from flightlab.errors import OnDemandFeatureError, shortened


def with_on_demand_features(
    batches: Iterator[pa.RecordBatch],
    schema: pa.Schema,
    on_demand_views: list[OnDemandFeatureView],
    feature_refs: list[str],
    full_feature_names: bool,
) -> tuple[Iterator[pa.RecordBatch], pa.Schema]:
    """``batches`` (of ``schema``) with the on-demand views' requested outputs
    appended, and the schema they have. Reads the first batch (or, when an
    output is all nulls in it, the second too) before it returns."""
    wanted = requested_columns(on_demand_views, feature_refs, full_feature_names)

    def transform(table: pa.Table) -> pa.Table:
        for odfv in on_demand_views:
            transformed = _transformed(odfv, table, full_feature_names)
            columns = wanted.get(odfv.projection.name_to_use())
            for name in transformed.column_names:
                if not name.startswith("__index") and (columns is None or name in columns):
                    table = table.append_column(name, transformed[name])
        return table

    first = next(batches, None)
    if first is None:  # no rows: the schema still has the outputs
        return iter(()), transform(schema.empty_table()).schema
    head = transform(pa.Table.from_batches([first]))
    untyped = [f.name for f in head.schema if pa.types.is_null(f.type)]
    second = next(batches, None) if untyped else None
    if second is None:
        # One batch holds the whole result (or every output has a type): its
        # schema is exactly the one Feast's whole-table transformation gives.
        out_schema = head.schema
        rest: list[pa.RecordBatch] = []
    else:
        out_schema = _declared_types(head.schema, untyped, on_demand_views, full_feature_names)
        rest = [second]

    def transformed_batches() -> Iterator[pa.RecordBatch]:
        yield from _cast(head, out_schema).to_batches()
        for batch in itertools.chain(rest, batches):
            yield from _cast(transform(pa.Table.from_batches([batch])), out_schema).to_batches()

    return transformed_batches(), out_schema


def requested_columns(
    on_demand_views: list[OnDemandFeatureView], feature_refs: list[str], full_feature_names: bool
) -> dict[str, set[str]]:
    """The output columns asked for, by on-demand view (projected name)."""
    wanted: dict[str, set[str]] = {}
    for ref in feature_refs:
        view_name, feature = ref.split(":", 1)
        for odfv in on_demand_views:
            name = odfv.projection.name_to_use()
            if view_name in (odfv.name, name):
                wanted.setdefault(name, set()).add(
                    f"{name}__{feature}" if full_feature_names else feature
                )
    return wanted


def _transformed(odfv: OnDemandFeatureView, table: pa.Table, full_feature_names: bool) -> pa.Table:
    try:
        return odfv.transform_arrow(table, full_feature_names)
    except Exception as exc:
        raise OnDemandFeatureError(
            f"on-demand feature view {odfv.name!r} failed on {table.num_rows} retrieved "
            f"row(s): {type(exc).__name__}: {shortened(str(exc), 300)}"
        ) from exc


def _declared_types(
    schema: pa.Schema,
    untyped: list[str],
    on_demand_views: list[OnDemandFeatureView],
    full_feature_names: bool,
) -> pa.Schema:
    """``schema`` with each untyped (null) output given its declared type."""
    declared: dict[str, pa.DataType] = {}
    for odfv in on_demand_views:
        prefix = odfv.projection.name_to_use()
        for feature in odfv.features:
            try:
                arrow_type = from_feast_to_pyarrow_type(feature.dtype)
            except (ValueError, AssertionError):
                continue  # a type Arrow cannot name: the column stays untyped
            declared[f"{prefix}__{feature.name}" if full_feature_names else feature.name] = (
                arrow_type
            )
    for name in untyped:
        if name in declared:
            index = schema.get_field_index(name)
            schema = schema.set(index, schema.field(index).with_type(declared[name]))
    return schema


def _cast(table: pa.Table, schema: pa.Schema) -> pa.Table:
    if table.schema.equals(schema):
        return table
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise OnDemandFeatureError(
            "an on-demand feature's values changed type between result batches "
            f"({shortened(str(exc), 300)}); declare its type in the view's schema"
        ) from exc
