"""A requested feature view as Feast's postgres store reads it.

Feast's store (``offline_utils.get_feature_view_query_context``) reverses the
source's ``field_mapping`` to find the source column behind each view column
(join keys, features, the timestamps), names join keys as the projection's
``join_key_map`` says, names outputs ``{name_to_use}__{feature}`` with full
feature names, and keeps the TTL in whole seconds (0: no bound).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from feast.feature_view import FeatureView

from flightlab.engine.postgres.connections import Session, where
from flightlab.engine.postgres.source import PostgresSource
from flightlab.engine.postgres.types import TIMESTAMP_TYPES, feature_type
from flightlab.errors import OfflineStoreQueryError


@dataclass(frozen=True)
class PgView:
    name: str  # the projection's name_to_use
    source: PostgresSource
    join_keys: tuple[tuple[str, str], ...]  # (source column, entity column)
    timestamp_column: str
    created_column: str | None
    features: tuple[tuple[str, str], ...]  # (source column, output column)
    ttl_seconds: int  # 0: no lower bound
    guarded: tuple[str, ...] = ()  # arrays whose dimensions the query checks

    @property
    def columns(self) -> tuple[str, ...]:
        """The source columns the view reads, once each."""
        names = [source for source, _ in self.join_keys]
        names.append(self.timestamp_column)
        if self.created_column:
            names.append(self.created_column)
        names += [source for source, _ in self.features]
        return tuple(dict.fromkeys(names))

    @property
    def entity_columns(self) -> tuple[str, ...]:
        return tuple(entity for _, entity in self.join_keys)


def resolve(
    view: FeatureView,
    source: PostgresSource,
    feature_refs: list[str],
    full_feature_names: bool,
) -> PgView:
    batch_source = view.batch_source
    source_of = {v: k for k, v in batch_source.field_mapping.items()}
    name = view.projection.name_to_use()
    features = [ref.split(":", 1)[1] for ref in feature_refs if ref.split(":", 1)[0] == name]
    join_key_map = view.projection.join_key_map
    created = batch_source.created_timestamp_column or None
    return PgView(
        name=name,
        source=source,
        join_keys=tuple(
            (source_of.get(c.name, c.name), join_key_map.get(c.name, c.name))
            for c in view.entity_columns
        ),
        timestamp_column=source_of.get(batch_source.timestamp_field, batch_source.timestamp_field),
        created_column=source_of.get(created, created) if created else None,
        features=tuple(
            (source_of.get(f, f), f"{name}__{f}" if full_feature_names else f) for f in features
        ),
        ttl_seconds=int(view.ttl.total_seconds()) if view.ttl else 0,
    )


def checked(view: PgView, session: Session, config: object) -> PgView | str:
    """``view``, with the arrays its query must check, or why the engine
    leaves it to Feast's store. A column the source lacks is the request's
    error, named here."""
    types = view.source.types(session)
    missing = [c for c in view.columns if c not in types]
    if missing:
        raise OfflineStoreQueryError(
            f"feature view {view.name!r} reads column {', '.join(map(repr, missing))}, which "
            f"its source ({view.source.description} in the offline store's database "
            f"{where(config)}) does not have; its columns are {list(types)}"
        )
    if types[view.timestamp_column] not in TIMESTAMP_TYPES:
        kind = types[view.timestamp_column]
        return f"its event timestamp {view.timestamp_column!r} is of type {kind}"
    for column in view.columns:
        if feature_type(types[column]) is None:
            return f"column {column!r} of {view.source.description} is of type {types[column]}"
    many, unknown = view.source.arrays(session, [source for source, _ in view.features])
    if many:
        return f"column {many[0]!r} of {view.source.description} has several dimensions"
    return dataclasses.replace(view, guarded=tuple(unknown))


def key_texts_collide(entity_rows: pa.Table, views: list[PgView], timestamp: str) -> bool:
    """Whether Feast's store would mix up two entity rows of a view with
    several join keys: it names an entity row by its keys' text concatenated
    with no separator, and its timestamp, so (1, 23) and (12, 3) at one time
    share one name and get each other's rows. Such a request goes to Feast's
    store, whose answer (wrong as it is) is the one to give."""
    for view in views:
        keys = list(dict.fromkeys(view.entity_columns))
        if len(keys) < 2:
            continue
        texts = [pc.cast(entity_rows.column(k), pa.string()) for k in keys]
        named = pa.table(
            {
                "__text": pc.binary_join_element_wise(*texts, ""),
                "__ts": entity_rows.column(timestamp),
                **{f"__k{i}": entity_rows.column(k) for i, k in enumerate(keys)},
            }
        )
        named = named.filter(pc.is_valid(named.column("__text")))
        distinct = named.group_by(named.column_names).aggregate([])
        names = distinct.group_by(["__text", "__ts"]).aggregate([([], "count_all")])
        if names.num_rows and pc.max(names.column("count_all")).as_py() > 1:
            return True
    return False
