"""Which feature views a historical retrieval reads, resolved as local Feast would.

``FeatureStore.get_historical_features`` resolves its feature references (or
feature service) into projected feature views before it calls the offline
store; a remote client has already done that and sends the result as
references, plus (flightlab's client) the projections it used. The server has
to redo the resolution against its registry, and it must come out the same:
aliases from ``with_name``, ``join_key_map`` and feature subsets included.
Both answering paths, flightlab's engine and Feast's offline store, start from
the :class:`HistoricalPlan` built here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from feast import FeatureService, FeatureStore, utils
from feast.errors import FeatureViewNotFoundException, RequestDataNotFoundInEntityDfException
from feast.feature_view import FeatureView
from feast.feature_view_projection import FeatureViewProjection
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.protos.feast.core.FeatureViewProjection_pb2 import (
    FeatureViewProjection as FeatureViewProjectionProto,
)
from google.protobuf.message import DecodeError

from flightlab.errors import MalformedParameterError


@dataclass(frozen=True)
class HistoricalPlan:
    """The arguments of ``OfflineStore.get_historical_features``, resolved.

    ``feature_refs`` are what the store is asked for (the requested references
    plus the on-demand views' inputs, as Feast adds them); ``requested_refs``
    are what the caller asked for.
    """

    feature_views: list[FeatureView]
    on_demand_views: list[OnDemandFeatureView]
    feature_refs: list[str]
    requested_refs: list[str]
    full_feature_names: bool

    @property
    def views_read(self) -> list[Any]:
        """Every view the retrieval reads, for permission checks."""
        return [*self.feature_views, *self.on_demand_views]


def plan_historical(
    store: FeatureStore,
    feature_refs: tuple[str, ...],
    projections: tuple[bytes, ...] = (),
    full_feature_names: bool = False,
) -> HistoricalPlan:
    """Resolve a retrieval's references against ``store``'s registry.

    ``projections`` (serialized ``FeatureViewProjection`` protos) are the ones
    the client's Feast resolved; a reference prefix they do not cover is a
    registered view's name or, as Feast's own offline server reads it, the
    alias of a projection in one of the registry's feature services.
    """
    refs = list(feature_refs)
    sent = {proj.name_to_use(): proj for proj in map(_projection_from_bytes, projections)}
    prefixes = dict.fromkeys(ref.split(":", 1)[0] for ref in refs)
    chosen = [sent.get(prefix) or _registered_projection(store, prefix) for prefix in prefixes]
    # A feature service is how Feast resolves a list of projections: let its
    # own resolver fetch the views, apply the projections, and add the
    # feature views that on-demand views compute from.
    service = FeatureService(name="flightlab_request", features=[])
    service.feature_view_projections = chosen
    views, on_demand = utils._get_feature_views_to_use(
        store.registry, store.project, service, allow_cache=True
    )
    on_demand = copy.deepcopy(on_demand)
    for odfv in on_demand:
        odfv.write_to_online_store = False  # as FeatureStore does for retrievals
    grouped_views, grouped_odfvs = utils._group_feature_refs(refs, views, on_demand)
    utils._validate_feature_refs(refs, full_feature_names)
    return HistoricalPlan(
        feature_views=[view for view, _ in grouped_views],
        on_demand_views=[view for view, _ in grouped_odfvs],
        feature_refs=_with_dependency_refs(refs, grouped_views),
        requested_refs=refs,
        full_feature_names=full_feature_names,
    )


def check_request_data(plan: HistoricalPlan, entity_columns: list[str]) -> None:
    """Raise Feast's error when an on-demand view's request data is missing."""
    for odfv in plan.on_demand_views:
        for name in odfv.get_request_data_schema():
            if name not in entity_columns:
                raise RequestDataNotFoundInEntityDfException(
                    feature_name=name, feature_view_name=odfv.name
                )


def _with_dependency_refs(refs: list[str], grouped_views: list[tuple[Any, list[str]]]) -> list[str]:
    # On-demand views' inputs are fetched too, appended after the requested
    # references, as FeatureStore.get_historical_features does.
    result = list(refs)
    seen = set(refs)
    for view, features in grouped_views:
        for feature in features:
            ref = f"{view.projection.name_to_use()}:{feature}"
            if ref not in seen:
                result.append(ref)
                seen.add(ref)
    return result


def _registered_projection(store: FeatureStore, prefix: str) -> FeatureViewProjection:
    try:
        return store.registry.get_any_feature_view(prefix, store.project, True).projection
    except FeatureViewNotFoundException:
        pass
    for service in store.registry.list_feature_services(store.project, allow_cache=True):
        for projection in service.feature_view_projections:
            if projection.name_alias == prefix:
                return projection
    raise FeatureViewNotFoundException(prefix, store.project)


def _projection_from_bytes(raw: bytes) -> FeatureViewProjection:
    proto = FeatureViewProjectionProto()
    try:
        proto.ParseFromString(raw)
    except DecodeError as exc:
        raise MalformedParameterError(
            f"'projections' holds something that is not a FeatureViewProjection: {exc}"
        ) from None
    return FeatureViewProjection.from_proto(proto)
