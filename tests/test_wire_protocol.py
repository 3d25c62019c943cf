"""flightlab's protocol as the seed document describes it, on the shared server.

- A client written from the seed document alone (bare pyarrow.flight, one
  do_put per parameter with ``command``/``api``/``param`` schema metadata,
  then get_flight_info + do_get) works unchanged.
- list_actions lists every action the server runs, each with a description,
  and the stats and drop actions do what it says.
"""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.flight as flight
from offline_helpers import ENTITY_KEYS, FEATURES, assert_same_rows

from flightlab.testing.sample_repo import entity_frame
from flightlab.wire import protocol
from flightlab.wire.actions import (
    ACTION_DROP,
    ACTION_HEALTHCHECK,
    ACTION_PROTOCOL_VERSION,
    ACTION_STATS,
)


def test_a_client_written_from_the_seed_document_works_unchanged(raw_flight, local_store):
    entity_df = entity_frame(40, seed=31)
    features = FEATURES

    # "The client creates a unique identifier for a new command, using the
    # UUID format, and generates a Flight Descriptor to represent it."
    command = str(uuid.uuid4())
    descriptor = flight.FlightDescriptor.for_command(command)

    # "Each call also includes additional metadata values to the data schema."
    def metadata(param: str) -> dict[str, str]:
        return {"command": command, "api": "get_historical_features", "param": param}

    entity_table = pa.Table.from_pandas(entity_df)  # as a user writes it: pandas metadata and all
    entity_table = entity_table.replace_schema_metadata(
        {**entity_table.schema.metadata, **metadata("entity_df")}
    )
    writer, _ = raw_flight.do_put(descriptor, entity_table.schema)
    writer.write_table(entity_table)
    writer.close()

    features_batch = pa.RecordBatch.from_arrays([pa.array(features)], ["features"])
    features_batch = features_batch.replace_schema_metadata(metadata("features"))
    writer, _ = raw_flight.do_put(descriptor, features_batch.schema)
    writer.write_batch(features_batch)
    writer.close()

    info = raw_flight.get_flight_info(descriptor)
    got = raw_flight.do_get(info.endpoints[0].ticket).read_pandas()

    expected = local_store.get_historical_features(entity_df, features).to_df()
    assert_same_rows(expected, got, ENTITY_KEYS)


def test_list_actions_lists_every_action_with_a_description(flight_client):
    actions = dict(flight_client.list_actions())
    runnable = {cls.api for cls in protocol.ACTION_REQUESTS}
    assert runnable == {
        "offline_write_batch",
        "write_logged_features",
        "persist",
        "validate_data_source",
        "export_retrieval",
    }
    assert set(actions) == runnable | {
        ACTION_DROP,
        ACTION_STATS,
        ACTION_HEALTHCHECK,
        ACTION_PROTOCOL_VERSION,
    }
    for name, description in actions.items():
        assert len(description) > 20, name
    for api in runnable:
        assert api in actions[api]  # each says which staged command it runs


def test_the_stats_and_drop_actions_do_what_list_actions_says(flight_client, offline_server):
    request = protocol.GetHistoricalFeatures(
        features=(FEATURES[0],), entity_df=pa.Table.from_pandas(entity_frame(5))
    )
    command_id = flight_client.stage(request)
    assert flight_client.stats()["staged_commands"] == 1

    # Another client cannot drop it (for it, the command does not exist)...
    raw = flight.FlightClient(offline_server.location)
    [answer] = raw.do_action(flight.Action(ACTION_DROP, command_id.encode()))
    assert answer.body.to_pybytes() == b'{"dropped": false}'
    raw.close()
    assert flight_client.stats()["staged_commands"] == 1
    # ...its owner can.
    assert flight_client.drop(command_id)
    assert flight_client.stats()["staged_commands"] == 0
