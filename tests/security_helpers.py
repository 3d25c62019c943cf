"""Real security fixtures for the tests: a loopback OIDC provider and a small PKI.

Nothing here is mocked. :class:`OidcProvider` is an HTTP server on a loopback
port that serves an OpenID discovery document and a JWKS, and signs RS256 JWTs
with its key, exactly what Feast's ``OidcTokenParser`` fetches and checks.
:func:`make_pki` writes PEM files for a CA, a server certificate for
127.0.0.1/localhost, a client certificate, and a second, unrelated CA (with a
client certificate of its own), generated with ``cryptography``.

And what the suites of ``tests/security/`` share: clients that send a user's
token, the checks of a refusal (not authenticated, denied, no traceback) and
of a server left clean and serving, what a write could change on the server's
disk, and client repos whose offline store is the server (flightlab's client
or Feast's stock one).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from feast import FeatureStore
from feast.errors import FeastPermissionError
from jwt.algorithms import RSAAlgorithm

from flightlab.client.transport import OfflineFlightClient
from flightlab.errors import AuthenticationFailedError
from flightlab.server import OfflineServer
from flightlab.testing.sample_repo import DAYS, START
from flightlab.wire import protocol
from flightlab.wire.headers import AUTHORIZATION_HEADER

KEY_ID = "flightlab-test-key"


# --- OIDC ------------------------------------------------------------------------


class OidcProvider:
    """A loopback OpenID provider: discovery document, JWKS and token signing."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # Same kid, another key: what a forged token signed elsewhere looks like.
        self.foreign_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=KEY_ID, use="sig", alg="RS256")
        self.requests: list[str] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                provider.requests.append(self.path)
                base = provider.base_url
                documents = {
                    "/.well-known/openid-configuration": {
                        "issuer": base,
                        "authorization_endpoint": f"{base}/auth",
                        "token_endpoint": f"{base}/token",
                        "jwks_uri": f"{base}/jwks",
                    },
                    "/jwks": {"keys": [jwk]},
                }
                document = documents.get(self.path)
                body = json.dumps(document if document is not None else {}).encode()
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    @property
    def discovery_url(self) -> str:
        return f"{self.base_url}/.well-known/openid-configuration"

    def token(
        self,
        user: str,
        roles: Sequence[str] = (),
        groups: Sequence[str] = (),
        expires_in: float = 600,
        foreign: bool = False,
    ) -> str:
        """A signed JWT for ``user``; ``foreign`` signs it with a key not in the JWKS."""
        now = int(time.time())
        claims = {
            "preferred_username": user,
            "sub": user,
            "roles": list(roles),
            "groups": list(groups),
            "iat": now,
            "exp": int(now + expires_in),
        }
        key = self.foreign_key if foreign else self.key
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KEY_ID})

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class BearerToken(flight.ClientMiddlewareFactory):
    """Sends ``authorization: Bearer <token>`` on every call of a FlightClient."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def start_call(self, info: Any) -> flight.ClientMiddleware:
        return _BearerMiddleware(self.token)


class _BearerMiddleware(flight.ClientMiddleware):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def sending_headers(self) -> dict[str, str]:
        # Spelled as Feast's clients send it; the server reads the scheme in any case.
        return {AUTHORIZATION_HEADER: f"Bearer {self.token}"}


# --- certificates ------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files of the test certificates."""

    ca: Path  # the CA that signs the server's and the good client's certificates
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # an unrelated CA
    other_client_cert: Path  # a client certificate signed by the unrelated CA
    other_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=1)
    )


def _make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _validity(builder).sign(key, hashes.SHA256()), key


def _make_leaf(
    common_name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return _validity(builder).sign(ca_key, hashes.SHA256()), key


def _write(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def make_pki(folder: Path) -> Pki:
    """Generate every certificate the TLS tests need, as PEM files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _make_ca("flightlab test CA")
    server, server_key = _make_leaf(
        "localhost",
        ca,
        ca_key,
        ExtendedKeyUsageOID.SERVER_AUTH,
        san=[
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    client, client_key = _make_leaf("alice", ca, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH)
    other_ca, other_ca_key = _make_ca("unrelated test CA")
    other_client, other_client_key = _make_leaf(
        "mallory", other_ca, other_ca_key, ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return Pki(
        ca=_write(folder / "ca.pem", ca),
        server_cert=_write(folder / "server.pem", server),
        server_key=_write_key(folder / "server.key", server_key),
        client_cert=_write(folder / "client.pem", client),
        client_key=_write_key(folder / "client.key", client_key),
        other_ca=_write(folder / "other_ca.pem", other_ca),
        other_client_cert=_write(folder / "other_client.pem", other_client),
        other_client_key=_write_key(folder / "other_client.key", other_client_key),
    )


# --- what the security suites share ---------------------------------------------------


PROJECT = "flightlab_sample"
CALL_TIMEOUT = 30.0  # no call of these tests may hang
PERSISTED_FILE = "persisted_training_set.parquet"


def new_driver_rows(hours_after_end: int, drivers: tuple[int, ...] = (1001, 1002)) -> pd.DataFrame:
    at = START + timedelta(days=DAYS, hours=hours_after_end)
    n = len(drivers)
    return pd.DataFrame(
        {
            "driver_id": pd.Series(drivers, dtype="int64"),
            "event_timestamp": pd.Series([at] * n).dt.as_unit("us"),
            "conv_rate": pd.Series([0.5] * n, dtype="float32"),
            "acc_rate": pd.Series([0.5] * n, dtype="float32"),
            "avg_daily_trips": pd.Series([42] * n, dtype="int64"),
            "created": pd.Series([at + timedelta(minutes=1)] * n).dt.as_unit("us"),
        }
    )


def client(
    server: OfflineServer, token: str | None = None, location: str | None = None, **kwargs: Any
) -> OfflineFlightClient:
    """A flightlab client of ``server`` that sends ``token`` (if any) on every call."""
    if token is not None:
        kwargs["middleware"] = [BearerToken(token)]
    return OfflineFlightClient(location or server.location, timeout=CALL_TIMEOUT, **kwargs)


def raw_client(
    server: OfflineServer, token: str | None = None, **kwargs: Any
) -> flight.FlightClient:
    if token is not None:
        kwargs["middleware"] = [BearerToken(token)]
    return flight.FlightClient(server.location, **kwargs)


def options() -> flight.FlightCallOptions:
    return flight.FlightCallOptions(timeout=CALL_TIMEOUT)


def no_traceback(exc: BaseException) -> None:
    """Neither the error nor what it was raised from carries a traceback."""
    seen = exc
    while seen is not None:
        assert "Traceback" not in str(seen), str(seen)
        assert 'File "' not in str(seen), str(seen)
        seen = seen.__cause__


def assert_unauthenticated(exc: BaseException) -> None:
    assert isinstance(exc, AuthenticationFailedError), repr(exc)
    assert isinstance(exc.__cause__, flight.FlightUnauthenticatedError), repr(exc.__cause__)
    no_traceback(exc)


def assert_denied(exc: BaseException, action: str, resource: str) -> None:
    assert isinstance(exc, FeastPermissionError), repr(exc)
    assert isinstance(exc.__cause__, flight.FlightUnauthorizedError), repr(exc.__cause__)
    message = str(exc)
    assert action in message, message
    assert resource in message, message
    no_traceback(exc)


def assert_clean_and_serving(server: OfflineServer, tokens: dict[str, str]) -> None:
    """The server holds no staged command and still answers an allowed call."""
    assert server.stats_json()["staged_commands"] == 0
    with client(server, tokens["rita"]) as c:
        request = protocol.PullLatestFromTableOrQuery(
            data_source_name="customer_stats_source",
            join_key_columns=("customer_id",),
            feature_name_columns=("avg_rating",),
            timestamp_field="event_timestamp",
            start_date=START,
            end_date=START + timedelta(days=DAYS),
        )
        assert c.fetch(request).num_rows == 5
    assert server.stats_json()["staged_commands"] == 0


def file_state(path: Path) -> tuple[int, int] | None:
    """Rows and mtime of a parquet file, or None when it does not exist."""
    if not path.exists():
        return None
    return pq.read_metadata(path).num_rows, path.stat().st_mtime_ns


def side_effects(repo: Path) -> dict[str, Any]:
    """What a write could change on the server's disk."""
    data = repo / "data"
    return {
        "driver_stats": file_state(data / "driver_stats.parquet"),
        "logs": sorted(str(f) for f in (data / "logs").rglob("*.parquet")),
        "persisted": file_state(data / PERSISTED_FILE),
    }


def _raw_put(c: flight.FlightClient, command_id: str) -> None:
    table = pa.table({"features": ["driver_stats:conv_rate"]})
    schema = table.schema.with_metadata(
        protocol.put_metadata(command_id, "get_historical_features", "features")
    )
    writer, _ = c.do_put(protocol.command_descriptor(command_id), schema, options())
    writer.write_table(table.replace_schema_metadata(schema.metadata))
    writer.close()


def listed(raw: flight.FlightClient) -> list[str]:
    """The command ids list_flights shows this caller."""
    return [i.descriptor.command.decode() for i in raw.list_flights(b"", options())]


# --- client repos ---------------------------------------------------------------------


def client_repo(
    path: Path,
    registry: Path,
    offline_store: dict[str, Any],
    auth: dict[str, Any] | None = None,
) -> FeatureStore:
    (path / "data").mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "project": PROJECT,
        "provider": "local",
        "registry": {"path": str(registry), "cache_ttl_seconds": 0},
        "online_store": {"type": "sqlite", "path": "data/online.db"},
        "offline_store": offline_store,
        "entity_key_serialization_version": 3,
    }
    if auth is not None:
        config["auth"] = auth
    (path / "feature_store.yaml").write_text(yaml.safe_dump(config))
    return FeatureStore(repo_path=str(path))


def flightlab_store(server: OfflineServer, **extra: Any) -> dict[str, Any]:
    return {
        "type": "flightlab.client.RemoteOfflineStore",
        "host": "127.0.0.1",
        "port": server.port,
        "timeout": CALL_TIMEOUT,
        **extra,
    }


def feast_store(server: OfflineServer, **extra: Any) -> dict[str, Any]:
    return {"type": "remote", "host": "127.0.0.1", "port": server.port, **extra}


FEATURES = ["driver_stats:conv_rate", "customer_stats:avg_rating"]
KEYS = ["driver_id", "customer_id", "event_timestamp"]


def same_rows(expected: pd.DataFrame, got: pd.DataFrame) -> None:
    columns = sorted(expected.columns)
    assert sorted(got.columns) == columns

    def tidy(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[columns].sort_values(KEYS).reset_index(drop=True)

    pd.testing.assert_frame_equal(tidy(got), tidy(expected))
