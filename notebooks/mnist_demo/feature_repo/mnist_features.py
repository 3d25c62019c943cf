"""Feature definitions of the MNIST demo (flightlab.mnist copies this repo)."""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.feature_logging import LoggingConfig
from feast.infra.offline_stores.file_source import FileLoggingDestination
from feast.types import Array, Float32, Int64, String

DATA = Path(__file__).resolve().parent / "data"

image = Entity(
    name="image",
    join_keys=["image_id"],
    value_type=ValueType.INT64,
    description="One MNIST image: 0..59999 train, 60000..69999 test",
)

mnist_source = FileSource(
    name="mnist_source",
    path=str(DATA / "mnist.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)

mnist = FeatureView(
    name="mnist",
    entities=[image],
    ttl=timedelta(0),  # no expiry: an image's features stay valid
    schema=[Field(name=f"feature_{row}", dtype=Array(Float32)) for row in range(1, 29)]
    + [
        Field(name="label", dtype=Int64),
        Field(name="split", dtype=String),
    ],
    source=mnist_source,
    description="Pixel rows 1..28 of each image (0..1), its digit and its split",
)

predictions_source = FileSource(
    name="mnist_predictions_source",
    path=str(DATA / "predictions.parquet"),
    timestamp_field="event_timestamp",
)

mnist_predictions = FeatureView(
    name="mnist_predictions",
    entities=[image],
    ttl=timedelta(0),
    schema=[
        Field(name="predicted_label", dtype=Int64),
        Field(name="confidence", dtype=Float32),
    ],
    source=predictions_source,
    description="A classifier's predictions, written back by the client notebook",
)

mnist_service = FeatureService(
    name="mnist",
    features=[mnist],
    logging_config=LoggingConfig(destination=FileLoggingDestination(path=str(DATA / "logs"))),
)
