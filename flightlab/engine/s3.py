"""S3 for the engine: where and as whom objects are read, and S3 failures named.

:class:`S3Endpoint` is a source's ``s3_endpoint_override`` and credentials;
:func:`s3_filesystem` keeps one ``pyarrow.fs.S3FileSystem`` per endpoint for
the process; :func:`named_error` turns pyarrow's S3 errors into flightlab's,
naming the URI and the endpoint, never a credential.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from flightlab.errors import (
    OfflineStoreCredentialsError,
    OfflineStoreUnavailableError,
    SourceObjectNotFoundError,
    shortened,
)

# The region of an S3-compatible store that is given none, by the source or
# the environment (MinIO's default; moto and most others ignore it). Without it
# the AWS SDK would ask the instance metadata service, which may take seconds
# to fail off AWS.
DEFAULT_REGION = "us-east-1"
# Endpoints (with their credentials) whose filesystem is kept open: rotating
# credentials make new ones, and the oldest are let go.
KEPT_FILESYSTEMS = 16

# The words of pyarrow's S3 errors ("AWS Error <CODE> during <Operation>: ...").
_UNREACHABLE = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Couldn't connect",
                "Could not resolve", "Timeout was reached", "REQUEST_TIMEOUT",
                "SERVICE_UNAVAILABLE", "SLOW_DOWN", "INTERNAL_FAILURE")  # fmt: skip
_REFUSED = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH",
            "EXPIRED_TOKEN", "INVALID_CLIENT_TOKEN_ID", "UNRECOGNIZED_CLIENT",
            "MISSING_AUTHENTICATION_TOKEN", "HTTP status 401", "HTTP status 403")  # fmt: skip
_MISSING = ("NO_SUCH_BUCKET", "NO_SUCH_KEY", "RESOURCE_NOT_FOUND", "HTTP status 404")


@dataclass(frozen=True)
class S3Endpoint:
    """Where and as whom a source's objects are read (one filesystem per value)."""

    endpoint_override: str | None = None  # host:port
    scheme: str = "https"
    # Sorted, from a connection_ref; never printed.
    credentials: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, override: str | None, credentials: Mapping[str, str] | None) -> S3Endpoint:
        """From Feast's ``s3_endpoint_override`` (``http://host:port``, or
        ``host:port`` for https) and a source's resolved credentials.

        pyarrow takes the scheme apart: given ``127.0.0.1:9000`` alone it
        speaks https, and fails against a plain-http store."""
        keys = tuple(sorted((credentials or {}).items()))
        if not override:
            return cls(None, "https", keys)
        parts = urlsplit(override if "://" in override else f"https://{override}")
        return cls(parts.netloc, parts.scheme or "https", keys)

    def describe(self) -> str:
        return f"{self.scheme}://{self.endpoint_override}" if self.endpoint_override else "AWS S3"

    def secrets(self) -> list[str]:
        return [value for _, value in self.credentials if len(value) >= 4]

    def options(self) -> dict[str, str]:
        """``S3FileSystem`` arguments, reading a connection_ref's keys as Feast's
        ``create_filesystem_and_path`` does; without keys, the AWS SDK's
        default chain (``AWS_*`` variables, ``~/.aws``, web identity, the
        instance's role)."""
        keys = dict(self.credentials)
        options: dict[str, str] = {}
        if self.endpoint_override:
            options.update(endpoint_override=self.endpoint_override, scheme=self.scheme)
        if keys.get("AWS_ACCESS_KEY_ID") and keys.get("AWS_SECRET_ACCESS_KEY"):
            options["access_key"] = keys["AWS_ACCESS_KEY_ID"]
            options["secret_key"] = keys["AWS_SECRET_ACCESS_KEY"]
            if keys.get("AWS_SESSION_TOKEN"):
                options["session_token"] = keys["AWS_SESSION_TOKEN"]
        region = keys.get("AWS_DEFAULT_REGION") or keys.get("AWS_REGION")
        if region:
            options["region"] = region
        elif self.endpoint_override and not _region_in_environment():
            options["region"] = DEFAULT_REGION
        return options


def _region_in_environment() -> bool:
    """Whether the AWS SDK finds a region itself (variables or a profile)."""
    names = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE")
    return any(os.environ.get(name) for name in names) or (Path.home() / ".aws/config").is_file()


_filesystems: OrderedDict[S3Endpoint, pafs.S3FileSystem] = OrderedDict()
_filesystems_lock = threading.Lock()


def s3_filesystem(endpoint: S3Endpoint) -> pafs.S3FileSystem:
    """The process's one ``S3FileSystem`` of ``endpoint`` (they are thread-safe,
    and each keeps its connections open for the next request); the
    ``KEPT_FILESYSTEMS`` most recently used are kept."""
    with _filesystems_lock:
        filesystem = _filesystems.get(endpoint)
        if filesystem is None:
            filesystem = _filesystems[endpoint] = pafs.S3FileSystem(**endpoint.options())
            while len(_filesystems) > KEPT_FILESYSTEMS:
                _filesystems.popitem(last=False)
        _filesystems.move_to_end(endpoint)
        return filesystem


def named_error(exc: BaseException, uri: str, endpoint: S3Endpoint | None) -> BaseException:
    """The flightlab error ``exc`` (pyarrow's, or DuckDB's wrapping one) stands
    for, reading ``uri``; ``exc`` itself when it is none of these."""
    text = str(exc)
    for secret in endpoint.secrets() if endpoint else ():
        text = text.replace(secret, "***")
    if "AWS Error" in text:  # past the wrappers (DuckDB's scan, pyarrow's "When ...")
        text = text[text.index("AWS Error") :]
    text = shortened(text.splitlines()[0] if text else type(exc).__name__, 400)
    at = f"at {endpoint.describe()}" if endpoint else ""
    if any(words in text for words in _UNREACHABLE):
        return OfflineStoreUnavailableError(
            f"the object storage {at} is unreachable, reading {uri}: {text}"
        )
    if any(words in text for words in _REFUSED):
        return OfflineStoreCredentialsError(
            f"the object storage {at} refused the server's credentials for {uri} "
            f"(a server configuration problem): {text}"
        )
    if isinstance(exc, FileNotFoundError) or any(words in text for words in _MISSING):
        return SourceObjectNotFoundError(f"{uri} is not there {at}: {text}")
    return exc
