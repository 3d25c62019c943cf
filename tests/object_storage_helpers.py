"""What the object-storage tests share: a loopback S3 server, repos whose
parquet sources are S3 objects, and the same repo on local disk to compare with.

Feast's own stores cannot read ``s3://`` here (its duckdb store needs DuckDB's
httpfs extension, downloaded on first use; its dask store needs s3fs), so
every answer from S3 is compared with Feast's duckdb store reading the *same
bytes* from local disk: a repo's feature views are applied to a local repo,
then :func:`mirror_to_s3` uploads each view's parquet file or folder and
applies the same objects to an S3 repo whose sources name the uploads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from feast import FeatureStore, FeatureView, FileSource
from feast.feature_view import DUMMY_ENTITY_NAME

from flightlab.testing.s3 import S3Server

BUCKET = "features"


@contextmanager
def s3_credentials(s3: S3Server) -> Iterator[None]:
    """The server's process reads with these (moto takes any; the SDKs want some)."""
    saved = {name: os.environ.get(name) for name in s3.client_env()}
    os.environ.update(s3.client_env())
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def s3_copy(source: FileSource, repo: Path, s3: S3Server, bucket: str = BUCKET) -> FileSource:
    """``source``'s parquet file or folder uploaded to ``bucket`` (its path
    under the repo's ``data/`` as the key), and the same source naming it."""
    local = Path(FileSource.get_uri_for_file_path(str(repo), source.path))
    key = local.relative_to(repo / "data").as_posix()
    if local.is_dir():
        uri = s3.upload_folder(local, bucket, key)
    else:
        uri = s3.upload_file(local, bucket, key)
    return FileSource(
        name=source.name,
        path=uri,
        file_format=source.file_format,
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_column,
        field_mapping=source.field_mapping or None,
        s3_endpoint_override=s3.endpoint,
    )


def s3_view(view: FeatureView, repo: Path, s3: S3Server, bucket: str = BUCKET) -> FeatureView:
    """A copy of ``view`` reading its source's bytes from S3."""
    copy = FeatureView.from_proto(view.to_proto())
    copy.batch_source = s3_copy(view.batch_source, repo, s3, bucket)
    # A view without entities reads back from a registry without the
    # placeholder entity Feast gave it: give it back, or apply refuses it.
    copy.entities = copy.entities or [DUMMY_ENTITY_NAME]
    return copy


def mirror_to_s3(local: FeatureStore, target: FeatureStore, s3: S3Server, done: set[str]) -> None:
    """Apply to ``target`` the objects of ``local`` not in ``done`` (their
    names, added), each feature view reading its bytes from S3."""
    repo = Path(local.repo_path)
    views = [
        s3_view(view, repo, s3) for view in local.list_feature_views() if view.name not in done
    ]
    others = [
        *(v for v in local.list_on_demand_feature_views() if v.name not in done),
        *(s for s in local.list_feature_services() if s.name not in done),
    ]
    target.apply([*local.list_entities(), *views, *others])
    done.update(o.name for o in [*views, *others])
