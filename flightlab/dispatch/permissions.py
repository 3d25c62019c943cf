"""Who may read and write what: the registry's Permission objects, applied as Feast applies them.

On a server with ``oidc`` or ``kubernetes`` auth, every resource a request
touches is checked for the calling user with Feast's own policy engine:
READ_OFFLINE to retrieve, WRITE_OFFLINE to write. Without auth, everyone may.
"""

from __future__ import annotations

from typing import Any

from feast import FeatureStore
from feast.data_source import DataSource
from feast.errors import DataSourceObjectNotFoundException, FeastPermissionError
from feast.permissions.action import AuthzedAction
from feast.permissions.enforcer import enforce_policy
from feast.permissions.user import User

from flightlab.dispatch.feast_objects import data_source_from_bytes, storage_proto
from flightlab.wire import protocol


class Permissions:
    """The permission checks of one store's requests."""

    def __init__(self, store: FeatureStore, enforce: bool):
        self.store = store
        self.enforce = enforce

    def authorize(self, user: Any, resource: Any, action: AuthzedAction) -> None:
        """Raise FeastPermissionError unless ``user`` may do ``action`` on ``resource``."""
        if not self.enforce:
            return
        enforce_policy(
            permissions=self.store.registry.list_permissions(project=self.store.project),
            user=user if user is not None else User("", []),
            resources=[resource],
            actions=[action],
        )

    def readable_source(self, request: protocol.PullRequest, user: Any) -> DataSource:
        """The source a pull reads, once ``user`` may read it: the registered
        one of its name, or the one the client sent (a saved dataset's storage)."""
        try:
            source = self.store.get_data_source(request.data_source_name)
        except DataSourceObjectNotFoundException as not_registered:
            if request.data_source is None:
                raise
            # Not in the registry by name (a saved dataset's storage, say):
            # use the source the client sent, if it exists.
            source = data_source_from_bytes(request.data_source)
            resource = self._registered_object_for(source) if self.enforce else source
            self.authorize(user, resource, AuthzedAction.READ_OFFLINE)
            try:  # reading its schema proves it exists (Feast's validate only warns)
                source.get_table_column_names_and_types(self.store.config)
            except Exception:
                raise not_registered from None
            return source
        self.authorize(user, source, AuthzedAction.READ_OFFLINE)
        return source

    def _registered_object_for(self, source: DataSource) -> Any:
        """The registered data source or saved dataset that stores where
        ``source`` points: what permissions are checked against. A source the
        client makes up could point at any file the server can read."""
        wanted = storage_proto(source)
        if wanted is not None:
            for candidate in self.store.list_data_sources():
                if storage_proto(candidate) == wanted:
                    return candidate
            for dataset in self.store.list_saved_datasets():
                if dataset.storage.to_proto() == wanted:
                    return dataset
        raise FeastPermissionError(
            f"data source {source.name or '(unnamed)'} is neither registered nor the "
            "storage of a registered saved dataset: a server with authentication "
            "reads only those"
        )
