"""A server's errors, raised on the client as the exceptions it described
(Feast's own classes where the server raised one), and failures to reach it
named for what to check."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow.flight as flight

from flightlab.errors import ConnectionFailedError, FlightlabError, RemoteServerError
from flightlab.wire.flight_errors import (
    as_flight_error,
    decode_detail,
    exception_from_detail,
    flight_class,
)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Raise a server's error as the exception it described."""
    try:
        yield
    except flight.FlightError as exc:
        if isinstance(exc, FlightlabError):
            raise  # already in its Flight form
        raise exception_for_flight_error(exc) from exc
    except FlightlabError as exc:  # raised on this side (the upload's entity rows, say)
        raise as_flight_error(exc) from exc


def _connection_failure(exc: flight.FlightError) -> str:
    text = str(exc)
    if "handshake" in text.lower() or "certificate" in text.lower():
        return (
            "TLS handshake with the flightlab server failed: check that the client "
            f"trusts the server's CA (cert), and its certificate for mTLS. {text}"
        )
    return f"cannot reach the flightlab server: {text}"


def exception_for_flight_error(exc: flight.FlightError) -> Exception:
    detail = decode_detail(getattr(exc, "extra_info", None)) or decode_detail(str(exc))
    if detail is not None:
        return exception_from_detail(detail)
    if isinstance(exc, flight.FlightUnavailableError):
        # A busy server says so in a detail; without one, nothing answered.
        return flight_class(ConnectionFailedError)(_connection_failure(exc))
    if isinstance(exc, (flight.FlightTimedOutError, flight.FlightCancelledError)):
        return exc
    return flight_class(RemoteServerError)(str(exc))
