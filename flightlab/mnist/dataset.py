"""The MNIST data set and its feature table, and the names of the demo's Feast
objects (entity, views, service, sources) that the repo's definitions use.

The data is read from the archive the caller names (a flightlab checkout ships
it at ``notebooks/mnist_demo/data/mnist.npz``); nothing here downloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

SIDE = 28
FEATURES = tuple(f"feature_{i}" for i in range(1, SIDE + 1))
PROJECT = "mnist_demo"
ENTITY = "image"
JOIN_KEY = "image_id"
FEATURE_VIEW = "mnist"
FEATURE_SERVICE = "mnist"
SOURCE = "mnist_source"
SOURCE_FILE = "mnist.parquet"
PREDICTIONS_VIEW = "mnist_predictions"
PREDICTIONS_SOURCE = "mnist_predictions_source"
PREDICTIONS_FILE = "predictions.parquet"
LOGS_DIR = "logs"
SAVED_DIR = "saved"

# Images are collected over 2024; a correction lands 30 days after its image;
# AS_OF is after every row, so retrieving "as of AS_OF" sees the final data.
START = datetime(2024, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=366)
CORRECTION_DELAY = timedelta(days=30)
INGEST_DELAY = timedelta(minutes=1)  # created = event time + this
AS_OF = datetime(2025, 3, 1, tzinfo=UTC)
CORRECTED_EVERY = 1000  # images 1000, 2000, ... 69000 had a wrong first label
DEFAULT_SEED = 2024

TIMESTAMP = pa.timestamp("us", tz="UTC")
ROW_TYPE = pa.list_(pa.float32())


# --- the shipped data ---------------------------------------------------------------


@dataclass(frozen=True)
class MnistData:
    """MNIST as one set: train images first (ids 0..59999), then test."""

    images: np.ndarray  # (n, 28, 28) uint8, 0..255
    labels: np.ndarray  # (n,) int64, 0..9
    splits: np.ndarray  # (n,) str, "train" or "test"
    image_ids: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> MnistData:
        """The first ``n`` images (for quick tests and previews)."""
        return MnistData(self.images[:n], self.labels[:n], self.splits[:n], self.image_ids[:n])

    def take(self, image_ids: Sequence[int] | np.ndarray) -> MnistData:
        index = np.searchsorted(self.image_ids, np.asarray(image_ids))
        return MnistData(
            self.images[index], self.labels[index], self.splits[index], self.image_ids[index]
        )


def load_mnist(path: str | Path) -> MnistData:
    """Load the shipped ``mnist.npz`` at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no MNIST archive at {path}: a flightlab checkout ships it at "
            "notebooks/mnist_demo/data/mnist.npz"
        )
    with np.load(path) as npz:
        x_train, y_train = npz["x_train"], npz["y_train"]
        x_test, y_test = npz["x_test"], npz["y_test"]
    images = np.concatenate([x_train, x_test])
    labels = np.concatenate([y_train, y_test]).astype(np.int64)
    splits = np.array(["train"] * len(y_train) + ["test"] * len(y_test))
    return MnistData(images, labels, splits, np.arange(len(labels), dtype=np.int64))


# --- the feature rows ---------------------------------------------------------------


def collected_at(image_ids: np.ndarray, seed: int = DEFAULT_SEED) -> pd.DatetimeIndex:
    """When each image was collected: a fixed random moment of 2024 per image id."""
    rng = np.random.default_rng(seed)
    # One draw per possible id, so an image's time does not depend on the slice.
    top = int(np.max(image_ids)) + 1 if len(image_ids) else 0
    seconds = rng.integers(0, int(SPAN.total_seconds()), size=top)
    offsets = pd.to_timedelta(seconds[np.asarray(image_ids, dtype=np.int64)], unit="s")
    return (pd.Timestamp(START) + offsets).as_unit("us")


def corrected_ids(image_ids: np.ndarray) -> np.ndarray:
    """The images whose first label was wrong and was corrected later."""
    image_ids = np.asarray(image_ids)
    return image_ids[(image_ids % CORRECTED_EVERY == 0) & (image_ids > 0)]


def wrong_label(label: np.ndarray | int) -> np.ndarray | int:
    """The label an image was first (wrongly) stored with."""
    return (label + 1) % 10


def pixel_rows(images: np.ndarray) -> list[pa.Array]:
    """28 Arrow list arrays: row ``r`` of every image, scaled to 0..1 float32."""
    n = len(images)
    scaled = images.astype(np.float32) / np.float32(255.0)
    offsets = pa.array(np.arange(0, (n + 1) * SIDE, SIDE, dtype=np.int32))
    return [
        pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(scaled[:, r, :]).ravel()))
        for r in range(SIDE)
    ]


def feature_table(data: MnistData, seed: int = DEFAULT_SEED) -> pa.Table:
    """The rows of the ``mnist`` feature view's source.

    One row per image at its collection time; for each corrected image, its
    first row carries the wrong label and a second row, CORRECTION_DELAY
    later, the right one.
    """
    ids = data.image_ids
    times = collected_at(ids, seed)
    fixed = np.isin(ids, corrected_ids(ids))
    first_labels = np.where(fixed, wrong_label(data.labels), data.labels)
    original = _rows(data.images, ids, first_labels, data.splits, times)
    later = data.take(ids[fixed])
    correction_times = collected_at(later.image_ids, seed) + pd.Timedelta(CORRECTION_DELAY)
    corrections = _rows(later.images, later.image_ids, later.labels, later.splits, correction_times)
    return pa.concat_tables([original, corrections])


def _rows(
    images: np.ndarray,
    ids: np.ndarray,
    labels: np.ndarray,
    splits: np.ndarray,
    times: pd.DatetimeIndex,
) -> pa.Table:
    event = pa.array(times, type=TIMESTAMP)
    created = pa.array(times + pd.Timedelta(INGEST_DELAY), type=TIMESTAMP)
    columns = {JOIN_KEY: pa.array(ids, pa.int64())}
    columns.update(zip(FEATURES, pixel_rows(images), strict=True))
    columns["label"] = pa.array(labels, pa.int64())
    columns["split"] = pa.array(splits, pa.string())
    columns["event_timestamp"] = event
    columns["created"] = created
    return pa.table(columns)


PREDICTIONS_SCHEMA = pa.schema(
    [
        (JOIN_KEY, pa.int64()),
        ("predicted_label", pa.int64()),
        ("confidence", pa.float32()),
        ("event_timestamp", TIMESTAMP),
    ]
)
