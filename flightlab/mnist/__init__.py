"""The MNIST demo: its data, its Feast feature repo and what the notebooks do with them.

The project ships the real MNIST digits (``notebooks/mnist_demo/data/mnist.npz``,
with its attribution; the functions that read it, or the committed feature repo,
are given their paths); nothing here downloads anything. The demo's feature repo
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

The package, by concern: :mod:`~flightlab.mnist.dataset` (the data and its
feature table), :mod:`~flightlab.mnist.repo` (the feature repo),
:mod:`~flightlab.mnist.retrieval` (entity rows, the point-in-time case,
comparisons), :mod:`~flightlab.mnist.training` (the classifier) and
:mod:`~flightlab.mnist.calls` (the other offline-store APIs). Everything
public is exported here, so notebooks write ``mnist.load_mnist("data/mnist.npz")``.
"""

from __future__ import annotations

from flightlab.mnist.calls import (
    feature_log,
    log_features,
    no_writes_note,
    offline_store_of,
    persist_retrieval,
    pull_all,
    pull_latest,
    read_saved,
    saved_storage,
    store_writes,
    validate_source,
    write_predictions,
)
from flightlab.mnist.dataset import (
    AS_OF,
    CORRECTED_EVERY,
    CORRECTION_DELAY,
    DEFAULT_SEED,
    ENTITY,
    FEATURE_SERVICE,
    FEATURE_VIEW,
    FEATURES,
    INGEST_DELAY,
    JOIN_KEY,
    LOGS_DIR,
    PREDICTIONS_FILE,
    PREDICTIONS_SCHEMA,
    PREDICTIONS_SOURCE,
    PREDICTIONS_VIEW,
    PROJECT,
    ROW_TYPE,
    SAVED_DIR,
    SIDE,
    SOURCE,
    SOURCE_FILE,
    SPAN,
    START,
    TIMESTAMP,
    MnistData,
    collected_at,
    corrected_ids,
    feature_table,
    load_mnist,
    pixel_rows,
    wrong_label,
)
from flightlab.mnist.repo import (
    REPO_FILES,
    apply,
    create_feature_repo,
    data_dir,
    registry_summary,
    require_source_data,
    write_client_repo,
    write_feature_repo,
    write_source_data,
)
from flightlab.mnist.retrieval import (
    Comparison,
    PointInTimeCase,
    as_table,
    compare_retrievals,
    entity_frame,
    feature_refs,
    image_arrays,
    image_from_row,
    images_from_features,
    matches_data,
    point_in_time_case,
    read_exported,
    rows_for,
    sample_rows,
    shard_image_ids,
    shards_frame,
    sort_by_image,
    split_arrays,
    split_ids,
)
from flightlab.mnist.training import (
    TrainedClassifier,
    train_classifier,
)

__all__ = [
    "no_writes_note",
    "read_saved",
    "saved_storage",
    "store_writes",
    "AS_OF",
    "CORRECTED_EVERY",
    "CORRECTION_DELAY",
    "Comparison",
    "DEFAULT_SEED",
    "ENTITY",
    "FEATURES",
    "FEATURE_SERVICE",
    "FEATURE_VIEW",
    "INGEST_DELAY",
    "JOIN_KEY",
    "LOGS_DIR",
    "MnistData",
    "PREDICTIONS_FILE",
    "PREDICTIONS_SCHEMA",
    "PREDICTIONS_SOURCE",
    "PREDICTIONS_VIEW",
    "PROJECT",
    "PointInTimeCase",
    "REPO_FILES",
    "ROW_TYPE",
    "SAVED_DIR",
    "SIDE",
    "SOURCE",
    "SOURCE_FILE",
    "SPAN",
    "START",
    "TIMESTAMP",
    "TrainedClassifier",
    "apply",
    "as_table",
    "collected_at",
    "compare_retrievals",
    "corrected_ids",
    "create_feature_repo",
    "data_dir",
    "entity_frame",
    "feature_log",
    "feature_refs",
    "feature_table",
    "image_from_row",
    "images_from_features",
    "load_mnist",
    "log_features",
    "matches_data",
    "offline_store_of",
    "persist_retrieval",
    "pixel_rows",
    "point_in_time_case",
    "pull_all",
    "pull_latest",
    "registry_summary",
    "require_source_data",
    "rows_for",
    "sample_rows",
    "sort_by_image",
    "image_arrays",
    "read_exported",
    "shard_image_ids",
    "shards_frame",
    "split_arrays",
    "split_ids",
    "train_classifier",
    "validate_source",
    "write_client_repo",
    "write_feature_repo",
    "write_predictions",
    "write_source_data",
    "wrong_label",
]
