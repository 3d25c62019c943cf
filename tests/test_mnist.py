"""The MNIST demo's logic (flightlab.mnist): real data, a real Feast repo, a real server."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from paths import MNIST_NPZ, MNIST_REPO

from flightlab import mnist

SLICE = 2_000  # images in the test repo: ids 0..1999, with image 1000 corrected


@pytest.fixture(scope="module")
def mnist_data() -> mnist.MnistData:
    return mnist.load_mnist(MNIST_NPZ)


@pytest.fixture(scope="module")
def mnist_table(mnist_data) -> pa.Table:
    return mnist.feature_table(mnist_data)


@pytest.fixture(scope="module")
def mnist_repo(tmp_path_factory, mnist_data):
    """The demo's feature repo over the first SLICE images, applied."""
    repo = tmp_path_factory.mktemp("mnist") / "feature_repo"
    return mnist.create_feature_repo(repo, MNIST_REPO, mnist_data.head(SLICE))


@pytest.fixture(scope="module")
def mnist_local_store(mnist_repo):
    from feast import FeatureStore

    return FeatureStore(repo_path=str(mnist_repo))


@pytest.fixture(scope="module")
def mnist_remote_store(mnist_repo, tmp_path_factory):
    """A client FeatureStore on a real flightlab server serving the repo."""
    from feast import FeatureStore

    from flightlab import notebook as nb

    server = nb.start_server(mnist_repo)
    client = mnist.write_client_repo(
        tmp_path_factory.mktemp("client"), "127.0.0.1", server.port, mnist_repo
    )
    yield FeatureStore(repo_path=str(client))
    server.stop()


# --- the shipped data -------------------------------------------------------------------


def test_the_shipped_archive_is_the_real_mnist(mnist_data):
    digest = hashlib.sha256(MNIST_NPZ.read_bytes()).hexdigest()
    assert digest == "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64"
    assert (MNIST_NPZ.parent / "README.md").is_file()  # its attribution
    assert len(mnist_data) == 70_000
    assert mnist_data.images.shape == (70_000, 28, 28)
    train = mnist_data.splits == "train"
    assert train.sum() == 60_000 and (~train).sum() == 10_000
    assert np.bincount(mnist_data.labels[train]).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]  # fmt: skip
    assert mnist_data.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist_data.image_ids.tolist() == list(range(70_000))


def test_a_missing_archive_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MNIST archive"):
        mnist.load_mnist(tmp_path / "nope.npz")


# --- the feature rows ----------------------------------------------------------------------


def test_the_feature_frame_has_one_image_per_id_with_values_in_0_1(mnist_table):
    ids = mnist_table.column("image_id").to_numpy()
    assert len(np.unique(ids)) == 70_000
    assert set(np.unique(ids)) == set(range(70_000))
    corrected = mnist.corrected_ids(np.arange(70_000))
    assert len(corrected) == 69 and corrected[0] == 1000
    assert mnist_table.num_rows == 70_000 + len(corrected)
    for name in mnist.FEATURES:
        column = mnist_table.column(name)
        assert column.type == pa.list_(pa.float32())
        values = column.combine_chunks().flatten().to_numpy()
        assert len(values) == mnist_table.num_rows * 28
        assert values.min() >= 0.0 and values.max() <= 1.0
    assert mnist_table.schema.names == [
        "image_id",
        *mnist.FEATURES,
        "label",
        "split",
        "event_timestamp",
        "created",
    ]
    assert mnist_table.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")


def test_event_timestamps_are_spread_over_2024(mnist_table):
    frame = mnist_table.select(["image_id", "event_timestamp", "created"]).to_pandas()
    first = frame.drop_duplicates("image_id", keep="first")["event_timestamp"]
    assert first.min() >= pd.Timestamp(mnist.START)
    assert first.max() < pd.Timestamp(mnist.START + mnist.SPAN)
    assert first.dt.date.nunique() > 300  # nearly every day of the year
    assert (frame["created"] - frame["event_timestamp"] == pd.Timedelta(minutes=1)).all()
    assert frame["event_timestamp"].max() < pd.Timestamp(mnist.AS_OF)


def test_timestamps_do_not_depend_on_the_slice(mnist_data):
    whole = mnist.collected_at(mnist_data.image_ids)
    part = mnist.collected_at(mnist_data.image_ids[:10])
    assert (whole[:10] == part).all()


def test_a_corrected_image_has_an_older_wrong_label(mnist_data, mnist_table):
    rows = mnist.rows_for(mnist_table, 1000)
    true = int(mnist_data.labels[1000])
    assert rows["label"].tolist() == [mnist.wrong_label(true), true]
    assert rows["event_timestamp"].diff().iloc[1] == pd.Timedelta(mnist.CORRECTION_DELAY)
    assert len(mnist.rows_for(mnist_table, 0)) == 1


def test_an_image_round_trips_through_its_features(mnist_data, mnist_table):
    head = mnist_table.slice(0, 50)
    rebuilt = mnist.images_from_features(head)
    assert rebuilt.dtype == np.float32 and rebuilt.shape == (50, 28, 28)
    assert np.array_equal(np.rint(rebuilt * 255).astype(np.uint8), mnist_data.images[:50])
    row = head.slice(7, 1).to_pylist()[0]
    assert np.array_equal(mnist.image_from_row(row), rebuilt[7])
    assert np.array_equal(mnist.image_from_row(head.to_pandas().iloc[7]), rebuilt[7])
    assert mnist.matches_data(mnist_table.slice(0, 50), mnist_data)


def test_rebuilding_refuses_incomplete_images():
    table = pa.table(
        {name: pa.array([[0.0] * 28, None], pa.list_(pa.float32())) for name in mnist.FEATURES}
    )
    with pytest.raises(ValueError, match="no feature_1"):
        mnist.images_from_features(table)
    with pytest.raises(ValueError, match="28x28"):
        mnist.image_from_row({name: [0.0] * 27 for name in mnist.FEATURES})


def test_entity_frame_is_microsecond_utc():
    frame = mnist.entity_frame(count=5)
    assert frame["image_id"].tolist() == [0, 1, 2, 3, 4]
    assert str(frame["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert (frame["event_timestamp"] == pd.Timestamp(mnist.AS_OF)).all()
    naive = mnist.entity_frame([3], at=pd.DatetimeIndex(["2024-05-01 10:00:00.123456789"]))
    assert naive["event_timestamp"][0] == pd.Timestamp("2024-05-01 10:00:00.123456", tz="UTC")


def test_a_written_feature_repo_holds_the_committed_definitions(tmp_path):
    repo = mnist.write_feature_repo(tmp_path / "repo", MNIST_REPO)
    for name in mnist.REPO_FILES:
        assert (repo / name).read_text() == (MNIST_REPO / name).read_text()
    text = (repo / "mnist_features.py").read_text()
    for name in (mnist.ENTITY, mnist.SOURCE, mnist.FEATURE_VIEW, mnist.FEATURE_SERVICE):
        assert f'name="{name}"' in text  # the definitions use the module's names
    # Writing the demo repo onto itself leaves it as it is.
    assert mnist.write_feature_repo(MNIST_REPO, MNIST_REPO) == MNIST_REPO


# --- the feature repo, applied --------------------------------------------------------


def test_the_repo_registers_the_demo_objects(mnist_local_store):
    summary = mnist.registry_summary(mnist_local_store)
    names = set(zip(summary["kind"], summary["name"], strict=True))
    assert {
        ("entity", "image"),
        ("data source", "mnist_source"),
        ("feature view", "mnist"),
        ("feature view", "mnist_predictions"),
        ("feature service", "mnist"),
    } <= names
    view = mnist_local_store.get_feature_view("mnist")
    assert [f.name for f in view.features] == [*mnist.FEATURES, "label", "split"]
    assert str(view.features[0].dtype) == "Array(Float32)"
    assert view.entities == ["image"]


def test_local_retrieval_gives_back_the_shipped_images(mnist_local_store, mnist_data):
    rows = mnist_local_store.get_historical_features(
        mnist.entity_frame(count=SLICE), features=mnist_local_store.get_feature_service("mnist")
    ).to_arrow()
    assert rows.num_rows == SLICE
    assert mnist.matches_data(rows, mnist_data)  # image 1000 has its corrected label


def test_point_in_time_returns_the_older_value(mnist_local_store, mnist_data):
    case = mnist.point_in_time_case(mnist_data)
    retrieved = mnist_local_store.get_historical_features(
        case.entity_df, features=["mnist:label"]
    ).to_df()
    table = case.check(retrieved)
    true = int(mnist_data.labels[1000])
    assert table["label"].tolist()[1:] == [mnist.wrong_label(true), true]
    assert pd.isna(table["label"][0])
    with pytest.raises(AssertionError, match="point-in-time"):
        case.check(retrieved.assign(label=true))
    with pytest.raises(AssertionError, match="point-in-time"):  # a row went missing
        case.check(retrieved.dropna())
    with pytest.raises(ValueError, match="never corrected"):
        mnist.point_in_time_case(mnist_data, 1001)


def test_remote_retrieval_equals_local(mnist_local_store, mnist_remote_store, mnist_data):
    entity_df = mnist.entity_frame(count=SLICE)
    local = mnist_local_store.get_historical_features(
        entity_df, features=mnist_local_store.get_feature_service("mnist")
    ).to_arrow()
    remote = mnist_remote_store.get_historical_features(
        entity_df, features=mnist_remote_store.get_feature_service("mnist")
    ).to_arrow()
    comparison = mnist.compare_retrievals(local, remote)
    assert comparison.equal and comparison.rows == SLICE
    assert comparison.to_frame()["equal"].item()
    case = mnist.point_in_time_case(mnist.sort_by_image(remote))
    case.check(
        mnist_remote_store.get_historical_features(case.entity_df, features=["mnist:label"]).to_df()
    )


def test_comparison_names_what_differs(mnist_table):
    table = mnist_table.slice(0, 20)
    labels = table.column("label").to_numpy().copy()
    labels[3] += 1
    changed = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    assert mnist.compare_retrievals(table, changed).differences == ("column label differs",)
    pixels = [np.zeros(28, np.float32)] * 20
    other = table.set_column(
        table.schema.get_field_index("feature_5"),
        "feature_5",
        pa.array(pixels, pa.list_(pa.float32())),
    )
    assert "pixel features differ" in mnist.compare_retrievals(table, other).differences
    assert not mnist.compare_retrievals(table, table.slice(0, 19)).equal


def test_the_other_apis_through_the_server(mnist_local_store, mnist_remote_store, mnist_repo):
    start = pd.Timestamp(mnist.START).to_pydatetime()
    end = pd.Timestamp(mnist.AS_OF).to_pydatetime()
    remote_latest = mnist.pull_latest(mnist_remote_store, start, end).to_arrow()
    local_latest = mnist.pull_latest(mnist_local_store, start, end).to_arrow()
    assert remote_latest.num_rows == local_latest.num_rows == SLICE
    assert remote_latest.sort_by("image_id").equals(local_latest.sort_by("image_id"))
    every = mnist.pull_all(mnist_remote_store, start, end).to_arrow()
    assert every.num_rows == SLICE + 1  # image 1000 twice

    assert mnist.validate_source(mnist_remote_store) == "mnist_source"

    at = pd.Timestamp("2025-06-01", tz="UTC")
    predictions = pd.DataFrame(
        {
            "image_id": np.arange(5, dtype=np.int64),
            "predicted_label": np.array([5, 0, 4, 1, 9], dtype=np.int64),
            "confidence": np.full(5, 0.5, dtype=np.float32),
            "event_timestamp": pd.DatetimeIndex([at] * 5).as_unit("us"),
        }
    )
    mnist.write_predictions(mnist_remote_store, predictions)
    written = mnist_local_store.get_historical_features(
        mnist.entity_frame(range(5), at=at.to_pydatetime()),
        features=["mnist_predictions:predicted_label"],
    ).to_df()
    assert sorted(zip(written["image_id"], written["predicted_label"], strict=True)) == list(
        zip(range(5), [5, 0, 4, 1, 9], strict=True)
    )

    path = mnist.data_dir(mnist_repo).resolve() / "saved" / "first_10.parquet"
    job = mnist_remote_store.get_historical_features(
        mnist.entity_frame(range(10)), features=["mnist:label"]
    )
    dataset = mnist.persist_retrieval(mnist_remote_store, job, "first_10", path)
    assert dataset.name == "first_10"
    assert sorted(pq.read_table(path).column("image_id").to_pylist()) == list(range(10))

    logs_dir = mnist.data_dir(mnist_repo) / mnist.LOGS_DIR
    before = set(logs_dir.iterdir())
    served = mnist_local_store.get_historical_features(
        mnist.entity_frame(range(3)), features=mnist_local_store.get_feature_service("mnist")
    ).to_arrow()
    logs = mnist.log_features(mnist_remote_store, served, request_id="test")
    assert logs.num_rows == 3 and "mnist__feature_1__status" in logs.schema.names
    new_files = set(logs_dir.iterdir()) - before
    assert len(new_files) == 1
    assert pq.read_table(next(iter(new_files))).column("__request_id").to_pylist() == ["test"] * 3


def test_feature_log_follows_the_service_logging_schema(mnist_local_store, mnist_table):
    from feast.feature_logging import FeatureServiceLoggingSource

    logs = mnist.feature_log(mnist_local_store, mnist_table.slice(0, 4), request_id="r1")
    service = mnist_local_store.get_feature_service("mnist")
    schema = FeatureServiceLoggingSource(service, mnist.PROJECT).get_schema(
        mnist_local_store.registry
    )
    assert logs.schema.equals(schema)
    assert logs.column("mnist__label").to_pylist() == mnist_table.column("label").to_pylist()[:4]


# --- the classifier ------------------------------------------------------------------


def test_a_small_classifier_learns_mnist(mnist_data):
    x = (mnist_data.images.reshape(-1, 784) / 255).astype(np.float32)
    y = mnist_data.labels
    train, test = slice(0, 6000), slice(60_000, 62_000)
    classifier = mnist.train_classifier(x[train], y[train], epochs=15)
    assert classifier.train_rows == 6000
    assert classifier.train_seconds < 60
    assert classifier.accuracy(x[test], y[test]) > 0.88
    frame = classifier.predictions_frame(x[test][:4], np.arange(60_000, 60_004))
    assert list(frame.columns) == ["image_id", "predicted_label", "confidence", "event_timestamp"]
    assert frame["confidence"].between(0, 1).all()
    assert (frame["predicted_label"].to_numpy() == classifier.predict(x[test][:4])).all()


def test_split_arrays_and_ids(mnist_table):
    table = mnist.sort_by_image(mnist_table.slice(59_990, 20))
    x, y = mnist.split_arrays(table, "test")
    assert x.shape == (10, 784) and x.dtype == np.float32
    assert mnist.split_ids(table, "test").tolist() == list(range(60_000, 60_010))
    assert len(y) == 10


def test_sample_rows_are_seeded_and_ordered(mnist_table):
    a = mnist.sample_rows(mnist_table, 10, seed=3)
    b = mnist.sample_rows(mnist_table, 10, seed=3)
    assert a.equals(b)
    ids = a.column("image_id").to_numpy()
    assert (np.diff(ids) >= 0).all()


def test_source_data_files(tmp_path, mnist_data):
    with pytest.raises(FileNotFoundError, match="01_prepare_mnist"):
        mnist.require_source_data(tmp_path)
    path = mnist.write_source_data(tmp_path, mnist.feature_table(mnist_data.head(10)))
    assert mnist.require_source_data(tmp_path) == path
    assert pq.read_metadata(path).num_rows == 10
    predictions = pq.read_table(tmp_path / "data" / mnist.PREDICTIONS_FILE)
    assert predictions.num_rows == 0 and predictions.schema.equals(mnist.PREDICTIONS_SCHEMA)
    assert (tmp_path / "data" / "logs").is_dir()


def test_correction_delay_keeps_every_row_before_as_of():
    last_collection = mnist.START + mnist.SPAN
    assert last_collection + mnist.CORRECTION_DELAY + timedelta(days=1) < mnist.AS_OF
