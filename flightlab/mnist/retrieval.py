"""What the notebooks retrieve and check: entity rows, the point-in-time case
of a corrected label, images rebuilt from features, and remote-vs-local
comparisons."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flightlab.mnist.dataset import (
    AS_OF,
    CORRECTED_EVERY,
    CORRECTION_DELAY,
    DEFAULT_SEED,
    FEATURE_VIEW,
    FEATURES,
    JOIN_KEY,
    SIDE,
    TIMESTAMP,
    MnistData,
    collected_at,
    wrong_label,
)


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


def image_arrays(rows: pa.Table | pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of every row: X is (n, 784) float32, y the labels."""
    table = as_table(rows)
    x = images_from_features(table).reshape(table.num_rows, SIDE * SIDE)
    return x, table.column("label").to_numpy()


def read_exported(files: Sequence[str]) -> pa.Table:
    """The rows of a server's export (``to_remote_storage()``'s files: local
    paths or URIs such as ``s3://``), as one table."""
    return pa.concat_tables(pq.read_table(f) for f in files)


def split_arrays(rows: pa.Table | pd.DataFrame, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of one split: X is (n, 784) float32, y the labels."""
    table = as_table(rows)
    mask = pc.equal(table.column("split"), split)
    part = table.filter(mask)
    x = images_from_features(part).reshape(part.num_rows, SIDE * SIDE)
    y = part.column("label").to_numpy()
    return x, y


def shard_image_ids(shard: Any) -> np.ndarray:
    """The image ids of a :class:`~flightlab.client.shards.Shard`, in the order
    they arrive, read batch by batch as a training worker reads its shard."""
    ids = [arrays[JOIN_KEY] for arrays in shard.arrays([JOIN_KEY])]
    return np.concatenate(ids) if ids else np.array([], dtype=np.int64)


def shards_frame(image_ids: Sequence[np.ndarray], shown: int = 6) -> pd.DataFrame:
    """One row per worker: how many images its shard held, and the first few
    in the order they came (a shuffled shard's own order)."""
    return pd.DataFrame(
        {
            "worker": range(len(image_ids)),
            "images": [len(ids) for ids in image_ids],
            f"first {shown} image ids": [ids[:shown].tolist() for ids in image_ids],
        }
    )
