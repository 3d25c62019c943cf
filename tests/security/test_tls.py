"""TLS and mTLS, with certificates made at test time, on a server with OIDC auth.

A small PKI (:func:`security_helpers.make_pki`: a CA, a server certificate
for 127.0.0.1/localhost, a client certificate, an unrelated CA and a client
certificate it signed). A TLS server serves a client that trusts its CA and
refuses plaintext clients and clients that do not trust it; an mTLS server
also refuses clients without a certificate of its CA. Each refusal is a
failed connection (not "busy") and leaves the server untouched. Client repos
connect through flightlab's client and Feast's stock client, and the CLI
serves TLS and stops on SIGTERM. TLS does not replace authentication.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pyarrow.flight as flight
import pytest
from offline_helpers import arrow
from security_helpers import (
    CALL_TIMEOUT,
    FEATURES,
    BearerToken,
    Pki,
    assert_unauthenticated,
    client,
    client_repo,
    feast_store,
    flightlab_store,
    make_pki,
    no_traceback,
    same_rows,
)

from flightlab.client.transport import OfflineFlightClient
from flightlab.errors import AuthenticationFailedError, ConnectionFailedError
from flightlab.server import OfflineServer, ServerTls
from flightlab.testing.processes import running_server, serve_offline_command
from flightlab.testing.sample_repo import entity_frame
from flightlab.wire import protocol


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(repo, pki) -> Iterator[OfflineServer]:
    with OfflineServer(
        repo, port=0, tls=ServerTls.from_files(pki.server_cert, pki.server_key)
    ) as s:
        yield s


@pytest.fixture(scope="module")
def mtls_server(repo, pki) -> Iterator[OfflineServer]:
    tls = ServerTls.from_files(pki.server_cert, pki.server_key, client_ca=pki.ca)
    with OfflineServer(repo, port=0, tls=tls) as s:
        yield s


def tls_request() -> protocol.Request:
    return protocol.GetHistoricalFeatures(
        features=("driver_stats:conv_rate",),
        entity_df=arrow(entity_frame(4, with_request_data=False)),
    )


def assert_tls_refused(server: OfflineServer, tokens: dict[str, str], **kwargs: Any) -> None:
    """The handshake fails: the client gets ConnectionFailedError (not "busy"),
    the server serves nothing."""
    before = server.stats_json()
    with (
        client(server, tokens["rita"], **kwargs) as c,
        pytest.raises(ConnectionFailedError) as refused,
    ):
        c.fetch(tls_request())
    assert isinstance(refused.value.__cause__, flight.FlightUnavailableError)
    no_traceback(refused.value)
    after = server.stats_json()
    assert after["requests_by_api"] == before["requests_by_api"]
    assert after["staged_commands"] == 0


def good_tls_fetch(server: OfflineServer, tokens: dict[str, str], **kwargs: Any) -> None:
    with client(server, tokens["rita"], **kwargs) as c:
        assert c.fetch(tls_request()).num_rows == 4
    assert server.stats_json()["staged_commands"] == 0


def test_tls_serves_a_client_that_trusts_its_ca(tls_server, pki, tokens):
    assert tls_server.location.startswith("grpc+tls://127.0.0.1:")
    good_tls_fetch(tls_server, tokens, tls_root_certs=pki.ca.read_bytes())
    # The certificate names localhost too.
    localhost = f"grpc+tls://localhost:{tls_server.port}"
    good_tls_fetch(tls_server, tokens, location=localhost, tls_root_certs=pki.ca.read_bytes())
    # TLS does not replace authentication.
    with client(tls_server, tls_root_certs=pki.ca.read_bytes()) as c:
        with pytest.raises(AuthenticationFailedError) as refused:
            c.fetch(tls_request())
    assert_unauthenticated(refused.value)


def test_tls_refuses_a_plaintext_client(tls_server, pki, tokens):
    assert_tls_refused(tls_server, tokens, location=f"grpc+tcp://127.0.0.1:{tls_server.port}")
    good_tls_fetch(tls_server, tokens, tls_root_certs=pki.ca.read_bytes())


@pytest.mark.parametrize("trust", ["other_ca", "system_cas"])
def test_tls_is_refused_by_a_client_that_does_not_trust_the_servers_ca(
    trust, tls_server, pki, tokens
):
    kwargs = {"tls_root_certs": pki.other_ca.read_bytes()} if trust == "other_ca" else {}
    assert_tls_refused(tls_server, tokens, **kwargs)
    good_tls_fetch(tls_server, tokens, tls_root_certs=pki.ca.read_bytes())


def test_mtls_serves_a_client_with_a_certificate_of_its_ca(mtls_server, pki, tokens):
    good_tls_fetch(
        mtls_server,
        tokens,
        tls_root_certs=pki.ca.read_bytes(),
        cert_chain=pki.client_cert.read_bytes(),
        private_key=pki.client_key.read_bytes(),
    )


@pytest.mark.parametrize("client_certificate", ["none", "other_ca", "plaintext"])
def test_mtls_refuses_a_client_without_a_certificate_of_its_ca(
    client_certificate, mtls_server, pki, tokens
):
    kwargs: dict[str, Any] = {"tls_root_certs": pki.ca.read_bytes()}
    if client_certificate == "other_ca":
        kwargs.update(
            cert_chain=pki.other_client_cert.read_bytes(),
            private_key=pki.other_client_key.read_bytes(),
        )
    if client_certificate == "plaintext":
        kwargs = {"location": f"grpc+tcp://127.0.0.1:{mtls_server.port}"}
    assert_tls_refused(mtls_server, tokens, **kwargs)
    good_tls_fetch(
        mtls_server,
        tokens,
        tls_root_certs=pki.ca.read_bytes(),
        cert_chain=pki.client_cert.read_bytes(),
        private_key=pki.client_key.read_bytes(),
    )


def test_client_repos_connect_over_tls_and_mtls(
    tls_server, mtls_server, repo, local, pki, tokens, tmp_path
):
    registry = repo / "data" / "registry.db"
    auth = {"type": "oidc", "token": tokens["rita"]}
    entities = entity_frame(10, seed=6, with_request_data=False)
    expected = local.get_historical_features(entities, FEATURES).to_df()
    https = {"scheme": "https", "cert": str(pki.ca)}
    mtls = {**https, "client_cert": str(pki.client_cert), "client_key": str(pki.client_key)}
    good = {
        "flightlab_tls": flightlab_store(tls_server, **https),
        "flightlab_mtls": flightlab_store(mtls_server, **mtls),
        # Feast's stock client speaks TLS too (it has no client certificate).
        "feast_tls": feast_store(tls_server, **https),
    }
    for name, store_config in good.items():
        store = client_repo(tmp_path / name, registry, store_config, auth)
        same_rows(expected, store.get_historical_features(entities, FEATURES).to_df())

    refused = {
        "plaintext_to_tls": flightlab_store(tls_server),
        "no_ca": flightlab_store(tls_server, scheme="https"),
        "other_ca": flightlab_store(tls_server, scheme="https", cert=str(pki.other_ca)),
        "mtls_without_certificate": flightlab_store(mtls_server, **https),
    }
    for name, store_config in refused.items():
        store = client_repo(tmp_path / name, registry, store_config, auth)
        with pytest.raises(ConnectionFailedError) as error:
            store.get_historical_features(entities, FEATURES).to_df()
        assert isinstance(error.value.__cause__, flight.FlightUnavailableError), name
    assert tls_server.stats_json()["staged_commands"] == 0
    assert mtls_server.stats_json()["staged_commands"] == 0


def test_the_cli_serves_tls_and_stops_on_sigterm(repo, pki, tokens, tmp_path):
    log = tmp_path / "server.log"
    command = serve_offline_command(repo, "-c", str(pki.server_cert), "-k", str(pki.server_key))
    with running_server(command, log=log, timeout=90, stop_signal=signal.SIGKILL) as server:
        line = server.stdout_lines[-1]
        assert line.startswith("flightlab serving grpc+tls://"), line
        location = server.location
        with OfflineFlightClient(
            location,
            timeout=CALL_TIMEOUT,
            tls_root_certs=pki.ca.read_bytes(),
            middleware=[BearerToken(tokens["rita"])],
        ) as c:
            assert c.fetch(tls_request()).num_rows == 4
        with OfflineFlightClient(
            f"grpc+tcp://127.0.0.1:{server.port}",
            timeout=CALL_TIMEOUT,
            middleware=[BearerToken(tokens["rita"])],
        ) as plaintext:
            with pytest.raises(ConnectionFailedError):
                plaintext.fetch(tls_request())

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        assert "SIGTERM received, stopping" in log.read_text()
        with (
            OfflineFlightClient(location, timeout=5, tls_root_certs=pki.ca.read_bytes()) as gone,
            pytest.raises(ConnectionFailedError),
        ):
            gone.list_actions()
