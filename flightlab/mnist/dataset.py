"""The MNIST demo: its data, its Feast feature repo and what the notebooks do with them.

The project ships the real MNIST digits (``notebooks/mnist_demo/data/mnist.npz``,
with its attribution); nothing here downloads anything. The demo's feature repo
holds one feature view, ``mnist``, with a row per image: the 28 pixel rows of
the image as 28 ``Array(Float32)`` features ``feature_1`` ... ``feature_28``
(values 0..1), the digit ``label`` and the ``split`` (train/test).

Every image was "collected" at a moment of 2024 (a seeded random spread), and a
few images (every :data:`CORRECTED_EVERY`-th) were first stored with a wrong
label that was corrected :data:`CORRECTION_DELAY` later: retrieving such an
image as of a moment between the two gives the older (wrong) label, which is
what point-in-time retrieval is for. :data:`AS_OF` is after every row.

The second feature view, ``mnist_predictions``, starts empty: the client
notebook writes a classifier's predictions to it (``offline_write_batch``).
"""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = PROJECT_ROOT / "notebooks" / "mnist_demo"
DEFAULT_NPZ = DEMO_DIR / "data" / "mnist.npz"
DEFAULT_REPO = DEMO_DIR / "feature_repo"

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


def load_mnist(path: str | Path | None = None) -> MnistData:
    """Load the shipped ``mnist.npz`` (default: the project's copy)."""
    path = Path(path) if path is not None else DEFAULT_NPZ
    if not path.is_file():
        raise FileNotFoundError(
            f"no MNIST archive at {path}: the project ships it at {DEFAULT_NPZ}"
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


# --- the feature repo -------------------------------------------------------------

# The demo's repo files are committed in DEFAULT_REPO (feature_store.yaml and
# the definitions, which name the objects above); other repos are copies.
REPO_FILES = ("feature_store.yaml", "mnist_features.py")


def write_feature_repo(repo: str | Path) -> Path:
    """Put the demo's ``feature_store.yaml`` and definitions file into ``repo``."""
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    for name in REPO_FILES:
        if (repo / name).resolve() != (DEFAULT_REPO / name).resolve():
            shutil.copyfile(DEFAULT_REPO / name, repo / name)
    return repo


def data_dir(repo: str | Path) -> Path:
    return Path(repo) / "data"


def write_source_data(repo: str | Path, table: pa.Table) -> Path:
    """Write the feature view sources under ``repo/data``; returns the mnist parquet.

    The predictions source is (re)created empty. Row groups of 8,192 rows let
    duckdb read the file on every core.
    """
    data = data_dir(repo)
    (data / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    (data / SAVED_DIR).mkdir(parents=True, exist_ok=True)
    path = data / SOURCE_FILE
    pq.write_table(table, path, row_group_size=8192)
    pq.write_table(PREDICTIONS_SCHEMA.empty_table(), data / PREDICTIONS_FILE)
    return path


def require_source_data(repo: str | Path) -> Path:
    """The mnist parquet of ``repo``; a FileNotFoundError naming the notebook
    that writes it if it is missing."""
    path = data_dir(repo) / SOURCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: run 01_prepare_mnist.ipynb first")
    return path


def apply(repo: str | Path) -> str:
    """``feast apply`` the repo; returns what Feast printed.

    In a child process, as :func:`flightlab.sample_repo.apply_repo` does: Feast
    imports a repo's definition files as modules, once per process.
    """
    import subprocess
    import sys

    repo = Path(repo).resolve()
    done = subprocess.run(
        [sys.executable, "-m", "feast.cli.cli", "-c", str(repo), "apply"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"feast apply failed in {repo}:\n{done.stdout}{done.stderr}")
    return done.stdout


def registry_summary(store: Any) -> pd.DataFrame:
    """The objects a repo's registry holds, one row each."""
    rows = []
    for entity in store.list_entities():
        rows.append(("entity", entity.name, f"join key {entity.join_key}"))
    for source in store.list_data_sources():
        rows.append(("data source", source.name, getattr(source, "path", "")))
    for view in store.list_feature_views():
        types = sorted({str(f.dtype) for f in view.features})
        rows.append(
            (
                "feature view",
                view.name,
                f"{len(view.features)} features ({', '.join(types)}), "
                f"entities {view.entities}, source {view.batch_source.name}",
            )
        )
    for service in store.list_feature_services():
        views = [p.name for p in service.feature_view_projections]
        logging = "with" if service.logging_config else "without"
        rows.append(("feature service", service.name, f"views {views}, {logging} logging"))
    for dataset in store.list_saved_datasets():
        rows.append(("saved dataset", dataset.name, str(dataset.storage.to_proto()).strip()))
    return pd.DataFrame(rows, columns=["kind", "name", "details"])


def create_feature_repo(
    repo: str | Path, data: MnistData | None = None, apply_it: bool = True
) -> Path:
    """The whole repo in one call: definitions, source data, ``feast apply``."""
    repo = write_feature_repo(repo)
    write_source_data(repo, feature_table(data if data is not None else load_mnist()))
    if apply_it:
        apply(repo)
    return repo


def write_client_repo(
    path: str | Path, host: str, port: int, server_repo: str | Path = DEFAULT_REPO
) -> Path:
    """A client repo at ``path`` whose offline store is the flightlab server at
    ``host:port``; it reads the registry the server's repo wrote."""
    from flightlab.sample_repo import client_repo_yaml

    path = Path(path)
    (path / "data").mkdir(parents=True, exist_ok=True)
    registry = (data_dir(server_repo) / "registry.db").resolve()
    (path / "feature_store.yaml").write_text(
        client_repo_yaml(host, port, project=PROJECT, registry=registry)
    )
    return path


# --- retrieval helpers -------------------------------------------------------------


def feature_refs(view: str = FEATURE_VIEW) -> list[str]:
    return [f"{view}:{name}" for name in (*FEATURES, "label", "split")]


def entity_frame(
    image_ids: Sequence[int] | np.ndarray | None = None,
    at: datetime | Sequence[datetime] | pd.DatetimeIndex = AS_OF,
    count: int = 70_000,
) -> pd.DataFrame:
    """Entity rows: ``image_ids`` (default ``0..count-1``) as of ``at``.

    Timestamps are microseconds in UTC, the precision duckdb keeps.
    """
    ids = np.arange(count, dtype=np.int64) if image_ids is None else np.asarray(image_ids)
    if isinstance(at, datetime):
        times = pd.DatetimeIndex([at] * len(ids))
    else:
        times = pd.DatetimeIndex(at)
    times = times.tz_convert("UTC") if times.tz is not None else times.tz_localize("UTC")
    return pd.DataFrame(
        {JOIN_KEY: ids.astype(np.int64), "event_timestamp": times.floor("us").as_unit("us")}
    )


@dataclass(frozen=True)
class PointInTimeCase:
    """One corrected image, asked for at three moments."""

    image_id: int
    collected: pd.Timestamp
    corrected: pd.Timestamp
    entity_df: pd.DataFrame
    expected_labels: tuple[int | None, ...]  # before collection, between, after

    def check(self, retrieved: pd.DataFrame) -> pd.DataFrame:
        """The retrieved labels next to the expected ones, in time order.

        Raises AssertionError if a label differs from the expected one or an
        entity row did not come back (Feast returns every entity row, with
        nulls where there is no value yet).
        """
        utc = "datetime64[ns, UTC]"
        asked = pd.DataFrame(
            {
                "as of": self.entity_df["event_timestamp"].astype(utc),
                "moment": ["before collection", "after collection", "after correction"],
                "expected": pd.array(self.expected_labels, dtype="Int64"),
            }
        )
        got = pd.DataFrame(
            {
                "as of": pd.to_datetime(retrieved["event_timestamp"], utc=True).astype(utc),
                "label": retrieved["label"].astype("Int64"),
            }
        )
        table = asked.merge(got, on="as of", how="left", indicator="returned")
        table["returned"] = table["returned"] == "both"
        table = table[["as of", "moment", "label", "expected", "returned"]]
        table = table.sort_values("as of").reset_index(drop=True)
        if (
            len(retrieved) != len(asked)
            or not table["returned"].all()
            or not table["label"].equals(table["expected"])
        ):
            raise AssertionError(f"point-in-time retrieval is wrong:\n{table}")
        return table


def point_in_time_case(
    data: MnistData | pa.Table,
    image_id: int = CORRECTED_EVERY,
    seed: int = DEFAULT_SEED,
) -> PointInTimeCase:
    """Entity rows for a corrected image: a day before it was collected (no
    value), a day after (the older, wrong label) and a day after the
    correction (the right label).

    ``data`` gives the right label: the shipped MNIST, or features retrieved
    as of :data:`AS_OF`.
    """
    if image_id % CORRECTED_EVERY or image_id <= 0:
        raise ValueError(f"image {image_id} was never corrected (try {CORRECTED_EVERY})")
    collected = collected_at(np.array([image_id]), seed)[0]
    corrected = collected + pd.Timedelta(CORRECTION_DELAY)
    day = pd.Timedelta(days=1)
    moments = [collected - day, collected + day, corrected + day]
    if isinstance(data, MnistData):
        label = int(data.take([image_id]).labels[0])
    else:
        rows = data.filter(pc.equal(data.column(JOIN_KEY), image_id))
        if rows.num_rows != 1:
            raise ValueError(f"the rows hold image {image_id} {rows.num_rows} times, not once")
        label = rows.column("label")[0].as_py()
    return PointInTimeCase(
        image_id=image_id,
        collected=collected,
        corrected=corrected,
        entity_df=entity_frame([image_id] * 3, at=pd.DatetimeIndex(moments)),
        expected_labels=(None, int(wrong_label(label)), label),
    )


def rows_for(table: pa.Table, image_id: int, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of one image (every version of it, in time order)."""
    columns = list(columns or (JOIN_KEY, "label", "split", "event_timestamp", "created"))
    rows = table.filter(pc.equal(table.column(JOIN_KEY), image_id)).select(columns)
    return rows.sort_by("event_timestamp").to_pandas()


def sample_rows(table: pa.Table, n: int, seed: int = 0) -> pa.Table:
    """``n`` rows picked at random (seeded), in image order."""
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(table.num_rows, size=min(n, table.num_rows), replace=False))
    return table.take(pa.array(index))


def matches_data(rows: pa.Table | pd.DataFrame, data: MnistData) -> bool:
    """True if retrieved rows (as of AS_OF) give back the shipped images and
    labels exactly."""
    table = sort_by_image(as_table(rows))
    ids = table.column(JOIN_KEY).to_numpy()
    expected = data.take(ids)
    if not np.array_equal(expected.image_ids, ids):
        return False
    pixels = np.rint(images_from_features(table) * 255).astype(np.uint8)
    return np.array_equal(pixels, expected.images) and np.array_equal(
        table.column("label").to_numpy(), expected.labels
    )


def sort_by_image(table: pa.Table) -> pa.Table:
    """Rows by image id (then time): offline stores return them in any order."""
    return table.sort_by([(JOIN_KEY, "ascending"), ("event_timestamp", "ascending")])


def as_table(rows: pa.Table | pd.DataFrame) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    return pa.Table.from_pandas(rows, preserve_index=False)


def images_from_features(rows: pa.Table | pd.DataFrame) -> np.ndarray:
    """Rebuild the (n, 28, 28) float32 images from retrieved feature rows."""
    table = as_table(rows)
    n = table.num_rows
    out = np.empty((n, SIDE, SIDE), dtype=np.float32)
    for r, name in enumerate(FEATURES):
        column = table.column(name).combine_chunks()
        if column.null_count:
            raise ValueError(f"{column.null_count} rows have no {name}: images are incomplete")
        values = column.flatten().to_numpy(zero_copy_only=False)
        if len(values) != n * SIDE:
            raise ValueError(f"{name} does not hold {SIDE} values per image")
        out[:, r, :] = values.reshape(n, SIDE)
    return out


def image_from_row(row: Mapping[str, Any]) -> np.ndarray:
    """Rebuild one 28x28 image from a retrieved row (a dict or a pandas row)."""
    image = np.stack([np.asarray(row[name], dtype=np.float32) for name in FEATURES])
    if image.shape != (SIDE, SIDE):
        raise ValueError(f"the row's features make a {image.shape} image, not {SIDE}x{SIDE}")
    return image


@dataclass(frozen=True)
class Comparison:
    """How two retrievals of the same entity rows compare."""

    rows: int
    equal: bool
    differences: tuple[str, ...]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "rows compared": [self.rows],
                "equal": [self.equal],
                "differences": ["; ".join(self.differences) or "none"],
            }
        )


def compare_retrievals(
    local: pa.Table | pd.DataFrame, remote: pa.Table | pd.DataFrame
) -> Comparison:
    """Compare two retrievals row by row (after sorting by image id): image
    ids, timestamps, every pixel, labels and splits must be identical."""
    a, b = sort_by_image(as_table(local)), sort_by_image(as_table(remote))
    differences = []
    if a.num_rows != b.num_rows:
        differences.append(f"{a.num_rows} rows vs {b.num_rows}")
    else:
        for name in (JOIN_KEY, "label", "split"):
            if a.column(name).to_pylist() != b.column(name).to_pylist():
                differences.append(f"column {name} differs")
        ta = a.column("event_timestamp").cast(TIMESTAMP).to_pylist()
        tb = b.column("event_timestamp").cast(TIMESTAMP).to_pylist()
        if ta != tb:
            differences.append("column event_timestamp differs")
        if not np.array_equal(images_from_features(a), images_from_features(b)):
            differences.append("pixel features differ")
    return Comparison(rows=a.num_rows, equal=not differences, differences=tuple(differences))


def split_ids(rows: pa.Table | pd.DataFrame, split: str) -> np.ndarray:
    """The image ids of one split, in row order."""
    table = as_table(rows)
    return table.filter(pc.equal(table.column("split"), split)).column(JOIN_KEY).to_numpy()


def split_arrays(rows: pa.Table | pd.DataFrame, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of one split: X is (n, 784) float32, y the labels."""
    table = as_table(rows)
    mask = pc.equal(table.column("split"), split)
    part = table.filter(mask)
    x = images_from_features(part).reshape(part.num_rows, SIDE * SIDE)
    y = part.column("label").to_numpy()
    return x, y


# --- a small classifier ---------------------------------------------------------------


@dataclass
class TrainedClassifier:
    model: Any
    train_rows: int
    train_seconds: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(self.predict(x) == y))

    def predictions_frame(
        self, x: np.ndarray, image_ids: np.ndarray, at: datetime | None = None
    ) -> pd.DataFrame:
        """Rows for the ``mnist_predictions`` view: predicted label and confidence."""
        probabilities = self.model.predict_proba(x)
        best = probabilities.argmax(axis=1)
        stamp = pd.Timestamp(at if at is not None else datetime.now(UTC)).floor("us")
        return pd.DataFrame(
            {
                JOIN_KEY: np.asarray(image_ids, dtype=np.int64),
                "predicted_label": self.model.classes_[best].astype(np.int64),
                "confidence": probabilities.max(axis=1).astype(np.float32),
                "event_timestamp": pd.DatetimeIndex([stamp] * len(best)).as_unit("us"),
            }
        )


def train_classifier(
    x: np.ndarray,
    y: np.ndarray,
    hidden: int = 64,
    epochs: int = 10,
    seed: int = 0,
    blas_threads: int | None = 1,
) -> TrainedClassifier:
    """A small multi-layer perceptron (scikit-learn): ~97% on MNIST's test
    split after 10 epochs, trained in seconds.

    ``blas_threads=1`` by default: on a busy two-core machine, multi-threaded
    BLAS spins against the other processes and training took 10x longer
    (47 s against 4.6 s measured); ``None`` leaves BLAS as it is.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    model = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=epochs, random_state=seed)
    started = time.perf_counter()
    with warnings.catch_warnings(), threadpool_limits(limits=blas_threads, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed number of epochs
        model.fit(x, y)
    return TrainedClassifier(model, len(y), time.perf_counter() - started)


# --- the other offline-store APIs, as the client notebook calls them ---------------
#
# Each takes a FeatureStore, local or remote: the same call runs in-process on
# duckdb or, through flightlab.client.RemoteOfflineStore, on the server.


def offline_store_of(store: Any) -> Any:
    """The OfflineStore a FeatureStore is configured with."""
    from feast.infra.offline_stores.offline_utils import get_offline_store_from_config

    return get_offline_store_from_config(store.config.offline_store)


def _pull(
    method: str,
    store: Any,
    start: datetime,
    end: datetime,
    source: str,
    features: Sequence[str],
) -> Any:
    data_source = store.get_data_source(source)
    return getattr(offline_store_of(store), method)(
        config=store.config,
        data_source=data_source,
        join_key_columns=[JOIN_KEY],
        feature_name_columns=list(features),
        timestamp_field=data_source.timestamp_field,
        created_timestamp_column=data_source.created_timestamp_column or None,
        start_date=start,
        end_date=end,
    )


def pull_latest(
    store: Any,
    start: datetime,
    end: datetime,
    source: str = SOURCE,
    features: Sequence[str] = ("label", "split"),
) -> Any:
    """``pull_latest_from_table_or_query``: each image's latest row in [start, end]."""
    return _pull("pull_latest_from_table_or_query", store, start, end, source, features)


def pull_all(
    store: Any,
    start: datetime,
    end: datetime,
    source: str = SOURCE,
    features: Sequence[str] = ("label", "split"),
) -> Any:
    """``pull_all_from_table_or_query``: every row in [start, end]."""
    return _pull("pull_all_from_table_or_query", store, start, end, source, features)


def validate_source(store: Any, source: str = SOURCE) -> str:
    """``validate_data_source``: check the offline store can read ``source``."""
    offline_store_of(store).validate_data_source(store.config, store.get_data_source(source))
    return source


def write_predictions(store: Any, predictions: pd.DataFrame) -> None:
    """``offline_write_batch``: append predictions to the ``mnist_predictions`` view."""
    store.write_to_offline_store(PREDICTIONS_VIEW, predictions)


def persist_retrieval(
    store: Any, job: Any, name: str, path: str | Path, allow_overwrite: bool = True
) -> Any:
    """``persist``: save a retrieval's result as a Feast saved dataset at
    ``path`` (a parquet file, written by whoever runs the offline store)."""
    from feast.infra.offline_stores.file_source import SavedDatasetFileStorage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "saving dataset is experimental"
        return store.create_saved_dataset(
            from_=job,
            name=name,
            storage=SavedDatasetFileStorage(path=str(path)),
            allow_overwrite=allow_overwrite,
        )


def feature_log(
    store: Any, rows: pa.Table | pd.DataFrame, request_id: str = "demo", at: datetime | None = None
) -> pa.Table:
    """The log a feature server would write for serving ``rows`` (retrieved
    ``mnist`` features), in the logging schema of the ``mnist`` service."""
    from feast.feature_logging import (
        LOG_DATE_FIELD,
        LOG_TIMESTAMP_FIELD,
        REQUEST_ID_FIELD,
        FeatureServiceLoggingSource,
    )

    table = as_table(rows)
    service = store.get_feature_service(FEATURE_SERVICE)
    schema = FeatureServiceLoggingSource(service, store.project).get_schema(store.registry)
    n = table.num_rows
    stamp = pd.Timestamp(at if at is not None else datetime.now(UTC)).floor("us")
    served_at = table.column("event_timestamp").cast(TIMESTAMP)
    columns: dict[str, Any] = {}
    for f in schema:
        name = f.name
        if name == JOIN_KEY:
            columns[name] = table.column(JOIN_KEY)
        elif name == LOG_TIMESTAMP_FIELD:
            columns[name] = pa.array([stamp] * n, TIMESTAMP)
        elif name == LOG_DATE_FIELD:
            columns[name] = pa.array([stamp.date()] * n, pa.date32())
        elif name == REQUEST_ID_FIELD:
            columns[name] = pa.array([request_id] * n, pa.string())
        elif name.endswith("__timestamp"):
            columns[name] = served_at
        elif name.endswith("__status"):
            columns[name] = pa.array([1] * n, pa.int32())  # FieldStatus.PRESENT
        else:
            feature = name.split("__", 1)[1]
            columns[name] = table.column(feature)
    return pa.table({f.name: pa.chunked_array(columns[f.name]).cast(f.type) for f in schema})


def log_features(store: Any, rows: pa.Table | pd.DataFrame, request_id: str = "demo") -> pa.Table:
    """``write_logged_features``: log served ``rows`` to the ``mnist`` service's
    logging destination; returns the log rows written."""
    logs = feature_log(store, rows, request_id=request_id)
    store.write_logged_features(logs=logs, source=store.get_feature_service(FEATURE_SERVICE))
    return logs
