"""The errors flightlab raises, what kind of failure each is, and bounded messages.

Every class here knows the *kind* of failure it is (``status``: an invalid
argument, something not found, the server busy...) and nothing of how it
travels: :mod:`flightlab.wire.flight_errors` maps each kind to a Flight error
class and encodes the error for the client, which gets it back as an
instance of both this class and that Flight class.

:func:`failure_status` gives the kind of any exception, flightlab's or a
library's (Feast's, a lock timeout, a bad value), so the server can answer
every failure with the right kind.
"""

from __future__ import annotations

import json
import threading
from typing import Any

INVALID_ARGUMENT = "invalid_argument"
NOT_FOUND = "not_found"
UNIMPLEMENTED = "unimplemented"
RESOURCE_EXHAUSTED = "resource_exhausted"
UNAVAILABLE = "unavailable"
UNAUTHENTICATED = "unauthenticated"
PERMISSION_DENIED = "permission_denied"
CANCELLED = "cancelled"
DEADLINE_EXCEEDED = "deadline_exceeded"
INTERNAL = "internal"

# An error's message is at most MAX_MESSAGE_CHARS characters, a value quoted
# in it QUOTE_CHARS. It must also fit, JSON-escaped, in the detail the client
# receives in its response headers (see flightlab.wire.flight_errors): at most
# MAX_DETAIL_BYTES for the whole detail, QUOTE_BYTES for a quoted value. JSON
# escaping makes an emoji 12 bytes, so characters alone do not bound it.
MAX_MESSAGE_CHARS = 800
QUOTE_CHARS = 80
MAX_DETAIL_BYTES = 2 * 1024
QUOTE_BYTES = 240
# Room kept for the "... (N more characters)" that marks a cut.
_CUT_MARK_BYTES = 40


def quoted(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters (and QUOTE_BYTES once
    encoded) with the size of the rest."""
    return shortened(repr(value), limit, QUOTE_BYTES)


def shortened(text: str, limit: int = MAX_MESSAGE_CHARS, max_bytes: int = MAX_DETAIL_BYTES) -> str:
    """``text`` cut to at most ``limit`` characters and ``max_bytes`` encoded
    bytes (see :func:`encoded_size`), saying how many characters were cut."""
    head = text[:limit]  # never measure more than ``limit`` characters of a huge text
    if len(head) == len(text) and encoded_size(head) <= max_bytes:
        return text
    keep = _fitting_prefix(head, max_bytes - _CUT_MARK_BYTES)
    return f"{text[:keep]}... ({len(text) - keep} more characters)"


def encoded_size(text: str) -> int:
    """The bytes ``text`` takes in an error detail: JSON-escaped (an emoji is
    12 bytes, a control character 6), each ``%`` percent-encoded (3 bytes)."""
    return len(json.dumps(text)) - 2 + 2 * text.count("%")


def _fitting_prefix(text: str, max_bytes: int) -> int:
    """How many leading characters of ``text`` fit in ``max_bytes`` encoded bytes."""
    size = 0
    for index, char in enumerate(text):
        size += encoded_size(char)
        if size > max_bytes:
            return index
    return len(text)


class FlightlabError(Exception):
    """Base class of the errors flightlab raises itself; ``status`` is the kind."""

    status: str = INTERNAL

    def __str__(self) -> str:
        # Feast's client re-creates a remote error without __init__ and hands
        # it the text in this attribute: honour it, as FeastError does.
        return getattr(self, "__overridden_message__", None) or super().__str__()

    @property
    def message(self) -> str:
        return str(self)


# --- the request's fault ----------------------------------------------------------------


class ProtocolError(FlightlabError):
    """A request that does not follow the wire protocol."""

    status = INVALID_ARGUMENT


class UnknownApiError(ProtocolError):
    status = UNIMPLEMENTED


class MissingParameterError(ProtocolError):
    pass


class MalformedParameterError(ProtocolError):
    pass


class UnknownParameterError(ProtocolError):
    pass


class ExportNotConfiguredError(FlightlabError):
    """An export asked of a server started without an export location."""

    status = UNIMPLEMENTED


class ProtocolVersionError(ProtocolError):
    """Client and server speak protocol versions that do not work together;
    the message says which side to upgrade."""


class UnknownCommandError(ProtocolError):
    """A command id or ticket the server does not hold (never staged, already
    run, dropped or expired)."""

    status = NOT_FOUND


class MalformedEntityDataError(ProtocolError):
    """Entity data the offline store cannot join on."""


class UnsupportedQueryError(ProtocolError):
    """``entity_df_sql`` sent to a store that cannot run SQL entity queries."""


class UnknownFeatureError(FlightlabError, KeyError):
    """A feature reference to a view that has no such feature. A KeyError, as
    Feast raises locally, with Feast's text."""

    status = NOT_FOUND

    def __str__(self) -> str:
        # As a local KeyError prints: the repr of its text, also when Feast's
        # client re-created it, giving it only __overridden_message__.
        text = getattr(self, "__overridden_message__", None)
        return repr(text) if text is not None else KeyError.__str__(self)


class MissingSourceColumnError(FlightlabError, ValueError):
    """A request names a column its data source does not have."""

    status = INVALID_ARGUMENT


class SourceObjectNotFoundError(FlightlabError):
    """A data source's data is not where the source says: no such object,
    prefix or bucket in object storage."""

    status = NOT_FOUND


class OfflineStoreQueryError(FlightlabError):
    """A query the request made the offline store run failed in its database."""

    status = INVALID_ARGUMENT


class ParquetWriteError(FlightlabError, ValueError):
    """Rows that cannot be appended to a parquet file (wrong columns)."""

    status = INVALID_ARGUMENT


# --- who is asking ------------------------------------------------------------------------


class AuthenticationFailedError(FlightlabError):
    """No credentials, or credentials the server does not accept."""

    status = UNAUTHENTICATED


# --- the server's state or its resources -----------------------------------------------------


class ResourceExhaustedError(FlightlabError):
    """Over one of the server's caps (staged bytes, a parameter's size, entity
    rows) or its engine's memory."""

    status = RESOURCE_EXHAUSTED


class ServerBusyError(FlightlabError):
    status = UNAVAILABLE


class ServerDrainingError(ServerBusyError):
    """The server is shutting down and takes no new commands: retry on another
    replica (an "unavailable" error, as a busy server's)."""


class ConnectionFailedError(FlightlabError):
    """The client could not reach the server, or the TLS handshake failed."""

    status = UNAVAILABLE


class OfflineStoreUnavailableError(FlightlabError):
    """The server's offline store (its database, or the object storage its
    sources are in) cannot be reached; retry later."""

    status = UNAVAILABLE


class ClientGoneError(FlightlabError):
    """The client cancelled the call, or its deadline passed."""

    status = CANCELLED


# --- the server's own fault ------------------------------------------------------------------


class OfflineStoreCredentialsError(FlightlabError):
    """The offline store's database, or the object storage of a source,
    refused the server's own credentials."""


class OnDemandFeatureError(FlightlabError):
    """An on-demand feature view's transformation failed on the retrieved rows:
    the repo's code, not the request, is at fault (the server logs the trace)."""


class RemoteServerError(FlightlabError):
    """An error from the server that the client cannot map to a known class."""


def _permission_denied_class() -> type:
    # Built on first use: importing feast costs seconds, and this module is
    # imported by processes that never see a permission error.
    global _PERMISSION_DENIED
    with _PERMISSION_DENIED_LOCK:  # one class, whichever thread asks first
        if _PERMISSION_DENIED is not None:
            return _PERMISSION_DENIED
        from feast.errors import FeastPermissionError

        def __init__(self, message: str = "") -> None:
            Exception.__init__(self, message)

        _PERMISSION_DENIED = type(
            "PermissionDeniedError",
            (FlightlabError, FeastPermissionError),
            {
                "__doc__": "Feast's FeastPermissionError, as one of flightlab's errors.",
                "__module__": __name__,
                "__init__": __init__,
                "status": PERMISSION_DENIED,
            },
        )
    return _PERMISSION_DENIED


_PERMISSION_DENIED: type | None = None
_PERMISSION_DENIED_LOCK = threading.Lock()


def __getattr__(name: str) -> Any:
    if name == "PermissionDeniedError":
        return _permission_denied_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The flightlab class a foreign error of each kind stands for.
_CLASS_FOR_STATUS: dict[str, type[FlightlabError]] = {
    UNAUTHENTICATED: AuthenticationFailedError,
    RESOURCE_EXHAUSTED: ResourceExhaustedError,
    UNAVAILABLE: ServerBusyError,
}


def class_for(exc: BaseException, status: str) -> type:
    """The class ``exc`` is reported as: its own, or, for another library's
    error of a kind flightlab has a class for (a FeastPermissionError, a lock
    timeout), flightlab's class of that kind."""
    if isinstance(exc, FlightlabError):
        return type(exc)
    if status == PERMISSION_DENIED:
        return _permission_denied_class()
    stand_in = _CLASS_FOR_STATUS.get(status)
    return stand_in if stand_in is not None else type(exc)


def failure_status(exc: BaseException) -> str:
    """What kind of failure ``exc`` is (one of this module's status names)."""
    from feast.errors import FeastObjectNotFoundException, FeastPermissionError
    from filelock import Timeout

    if isinstance(exc, FlightlabError):
        return exc.status
    if isinstance(exc, Timeout):  # another process holds a write lock: retry later
        return UNAVAILABLE
    if isinstance(exc, FeastPermissionError):
        return PERMISSION_DENIED
    if isinstance(exc, FeastObjectNotFoundException):
        return NOT_FOUND
    if isinstance(exc, NotImplementedError):  # an API the server's store lacks
        return UNIMPLEMENTED
    if _is_input_error(exc):
        return INVALID_ARGUMENT
    return INTERNAL


def _is_input_error(exc: BaseException) -> bool:
    import pyarrow as pa
    from feast.errors import FeastError

    # Feast and pyarrow report bad input (an entity frame without a timestamp,
    # a column of the wrong type, an unknown ref, a data source whose file
    # does not exist) with these classes.
    return isinstance(
        exc, (FeastError, ValueError, KeyError, TypeError, FileNotFoundError, pa.ArrowException)
    )
