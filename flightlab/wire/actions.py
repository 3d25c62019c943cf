"""The Flight actions a flightlab server offers, and what ``list_actions`` says of them.

Besides the offline-store APIs that return no data (run with
``do_action(api, body=command id)``), four actions are the server's own.
"""

from __future__ import annotations

# Drop a staged command without running it (body: the command id).
ACTION_DROP = "drop_command"
# The server's counters, as JSON.
ACTION_STATS = "stats"
# Readiness, as JSON (what the gRPC health service answers too).
ACTION_HEALTHCHECK = "healthcheck"
# The protocol versions the server speaks, as JSON (see flightlab.wire.version).
ACTION_PROTOCOL_VERSION = "protocol_version"

DESCRIPTIONS = {
    "offline_write_batch": "Run a staged offline_write_batch: append the staged "
    "'table' to the batch source of feature view 'feature_view_name'.",
    "write_logged_features": "Run a staged write_logged_features: write the staged "
    "'data' to the logging destination of feature service 'feature_service_name'.",
    "persist": "Run a staged persist: execute the staged retrieval and save its "
    "result to the staged 'storage' or 'destination_name'.",
    "export_retrieval": "Run a staged export_retrieval: execute the staged retrieval and "
    "write its result as parquet files under the server's export location; answers the "
    "files' URIs.",
    "validate_data_source": "Run a staged validate_data_source: check that the "
    "staged 'data_source' exists and can be read by the offline store.",
    ACTION_DROP: "Drop a staged command without running it (body: the command id).",
    ACTION_STATS: "Report staged commands, requests served per API and errors, as JSON.",
    ACTION_PROTOCOL_VERSION: "Report the flightlab protocol version the server speaks and the "
    "oldest client version it serves, as JSON.",
    ACTION_HEALTHCHECK: "Report readiness as JSON: status SERVING once the registry loaded "
    "and the offline store answered, NOT_SERVING before that and while draining.",
}
