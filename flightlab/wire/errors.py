"""Errors that flightlab raises, and how any error crosses the wire.

An error travels as a small JSON *detail* ``{"module", "class", "message",
"status"}``: the first three are the convention Feast's own remote offline
store uses, so Feast's exceptions (``FeatureViewNotFoundException``...) are
raised again on the client as themselves. ``status`` says what kind of failure
it was (``invalid_argument``, ``not_found``...), which the server turns into a
Flight error class. Each class a detail names is also the Flight class of its
status (see ``_wire_class``), on Feast's stock client too.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

# Modules whose exception classes a client is willing to re-create from a
# detail sent by a server: never import an arbitrary module named on the wire.
_TRUSTED_MODULE_PREFIXES = ("feast.", "flightlab.", "builtins", "pyarrow.", "ibis.")

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
# in it QUOTE_CHARS. But gRPC counts bytes: the detail travels three times in
# the response's headers (the status text; Arrow's copy of it; the detail),
# which a client may refuse above 8 KiB in all (gRPC's soft limit; always above
# 16 KiB), and JSON escaping makes an emoji 12 bytes. So the encoded detail is
# also kept within MAX_DETAIL_BYTES (about 6.5 KiB of headers), a quoted value
# QUOTE_BYTES; more would reach the client as gRPC's "metadata size exceeds
# ... limit" (or an internal error) instead of the server's error.
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
    """``text`` cut to at most ``limit`` characters and ``max_bytes`` bytes on
    the wire (see :func:`wire_size`), saying how many characters were cut."""
    head = text[:limit]  # never measure more than ``limit`` characters of a huge text
    if len(head) == len(text) and wire_size(head) <= max_bytes:
        return text
    keep = _fitting_prefix(head, max_bytes - _CUT_MARK_BYTES)
    return f"{text[:keep]}... ({len(text) - keep} more characters)"


def wire_size(text: str) -> int:
    """The bytes ``text`` takes in an error detail: JSON-escaped (an emoji is
    12 bytes, a control character 6) and with gRPC's percent-encoding of ``%``."""
    return len(json.dumps(text)) - 2 + 2 * text.count("%")


def _fitting_prefix(text: str, max_bytes: int) -> int:
    """How many leading characters of ``text`` fit in ``max_bytes`` wire bytes."""
    size = 0
    for index, char in enumerate(text):
        size += wire_size(char)
        if size > max_bytes:
            return index
    return len(text)


class FlightlabError(Exception):
    """Base class of the errors flightlab raises itself.

    Each subclass is also the pyarrow.flight error class of its status, so
    ``except pyarrow.flight.FlightUnauthenticatedError`` (say) catches it.
    """

    status: str = INTERNAL
    # pyarrow's FlightError sets this in __init__; a copy re-created from the
    # wire (by Feast's client, without __init__) still has one.
    extra_info: bytes = b""

    def __str__(self) -> str:
        # Feast's client re-creates a remote error without __init__ and hands
        # it the text in this attribute: honour it, as FeastError does.
        return getattr(self, "__overridden_message__", None) or super().__str__()

    @property
    def message(self) -> str:
        return str(self)


class ProtocolError(FlightlabError, flight.FlightServerError):
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


class UnknownCommandError(ProtocolError):
    """A command id or ticket the server does not hold (never staged, already
    run, dropped or expired)."""

    status = NOT_FOUND


class MalformedEntityDataError(ProtocolError):
    """Entity data the offline store cannot join on."""


class AuthenticationFailedError(FlightlabError, flight.FlightUnauthenticatedError):
    """No credentials, or credentials the server does not accept."""

    status = UNAUTHENTICATED


class ResourceExhaustedError(FlightlabError, flight.FlightUnavailableError):
    """Over one of the server's caps (staged bytes, a parameter's size, entity rows)."""

    status = RESOURCE_EXHAUSTED


class ServerBusyError(FlightlabError, flight.FlightUnavailableError):
    status = UNAVAILABLE


class ConnectionFailedError(FlightlabError, flight.FlightUnavailableError):
    """The client could not reach the server, or the TLS handshake failed."""

    status = UNAVAILABLE


class OfflineStoreUnavailableError(FlightlabError, flight.FlightUnavailableError):
    """The server's offline store (its database) cannot be reached; retry later."""

    status = UNAVAILABLE


class OfflineStoreCredentialsError(FlightlabError, flight.FlightInternalError):
    """The offline store's database refused the server's own credentials."""


class OfflineStoreQueryError(FlightlabError, flight.FlightServerError):
    """A query the request made the offline store run failed in its database."""

    status = INVALID_ARGUMENT


class RemoteServerError(FlightlabError, flight.FlightServerError):
    """An error from the server that the client cannot map to a known class."""


class UnsupportedQueryError(ProtocolError):
    """``entity_df_sql`` sent to a store that cannot run SQL entity queries."""


class UnknownFeatureError(FlightlabError, KeyError, flight.FlightServerError):
    """A feature reference to a view that has no such feature. A KeyError, as
    Feast raises locally, with Feast's text."""

    status = NOT_FOUND

    def __str__(self) -> str:
        # As a local KeyError prints: the repr of its text, also when Feast's
        # client re-created it, giving it only __overridden_message__.
        text = getattr(self, "__overridden_message__", None)
        return repr(text) if text is not None else KeyError.__str__(self)


# The flightlab class a foreign error of each status is sent as (see _wire_class).
_FLIGHTLAB_CLASS_FOR_STATUS: dict[str, type[FlightlabError]] = {
    UNAUTHENTICATED: AuthenticationFailedError,
    RESOURCE_EXHAUSTED: ResourceExhaustedError,
    UNAVAILABLE: ServerBusyError,
}


def _permission_denied_class() -> type:
    # Built on first use: importing feast costs seconds, and wire.errors is
    # imported by processes that never see a permission error.
    global _PERMISSION_DENIED
    if _PERMISSION_DENIED is None:
        from feast.errors import FeastPermissionError

        def __init__(self, message: str = "") -> None:
            Exception.__init__(self, message)
            self.extra_info = b""

        _PERMISSION_DENIED = type(
            "PermissionDeniedError",
            (FlightlabError, FeastPermissionError, flight.FlightUnauthorizedError),
            {
                "__doc__": "Feast's FeastPermissionError, as a pyarrow FlightUnauthorizedError.",
                "__module__": __name__,
                "__init__": __init__,
                "status": PERMISSION_DENIED,
            },
        )
    return _PERMISSION_DENIED


_PERMISSION_DENIED: type | None = None


def __getattr__(name: str) -> Any:
    if name == "PermissionDeniedError":
        return _permission_denied_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def error_detail(exc: BaseException, status: str) -> dict[str, str]:
    """The wire form of ``exc``, at most MAX_DETAIL_BYTES once encoded."""
    cls = _wire_class(exc, status)
    detail = {"module": cls.__module__, "class": cls.__name__, "message": "", "status": status}
    room = MAX_DETAIL_BYTES - len(encode_detail(detail))
    detail["message"] = shortened(_message(exc), max_bytes=room) or cls.__name__
    return detail


def _wire_class(exc: BaseException, status: str) -> type:
    """The class a detail names for ``exc``.

    A client re-creates the class named (Feast's stock client imports it by
    name), so another library's error whose status has a Flight class of its
    own (a FeastPermissionError, a lock timeout) is named as flightlab's class
    for that status, which is also the Flight class, and Feast's where Feast
    has one: ``except pyarrow.flight.FlightUnauthorizedError`` catches it on
    any client. Without flightlab installed, Feast's client raises the Flight
    error itself, which is of that class too.
    """
    if isinstance(exc, FlightlabError):
        return type(exc)
    if status == PERMISSION_DENIED:
        return _permission_denied_class()
    stand_in = _FLIGHTLAB_CLASS_FOR_STATUS.get(status)
    return stand_in if stand_in is not None else type(exc)


def _message(exc: BaseException) -> str:
    # str(KeyError("x")) is "'x'": send "x", or the KeyError re-created on the
    # client would print "\"'x'\"", a pair of quotes more than locally.
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


def encode_detail(detail: dict[str, str]) -> str:
    return json.dumps(detail, sort_keys=True)


def decode_detail(raw: bytes | str | None) -> dict[str, str] | None:
    """Parse a detail; ``None`` when ``raw`` is not one."""
    if not raw:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    start = text.find("{")
    if start < 0:
        return None
    try:
        detail, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    if isinstance(detail, dict) and {"module", "class", "message"} <= detail.keys():
        return detail
    return None


def exception_from_detail(detail: dict[str, str]) -> Exception:
    """Re-create the exception a detail describes, as faithfully as is safe.

    Feast's and flightlab's own classes come back as themselves; anything else
    becomes a :class:`RemoteServerError` naming the original class.
    """
    message = detail["message"]
    cls = _trusted_exception_class(detail["module"], detail["class"])
    if cls is None:
        return RemoteServerError(f"{detail['class']}: {message}")
    if detail.get("status") == PERMISSION_DENIED and not issubclass(cls, FlightlabError):
        # Feast's FeastPermissionError, which a caller may also catch as
        # Flight's FlightUnauthorizedError.
        cls = _permission_denied_class()
    return _instantiate_without_init(cls, message)


def _trusted_exception_class(module_name: str, class_name: str) -> type | None:
    if not module_name.startswith(_TRUSTED_MODULE_PREFIXES):
        return None
    try:
        cls: Any = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, Exception) else None


def _instantiate_without_init(cls: type, message: str) -> Exception:
    # Feast's exception constructors take domain arguments (names, lists), not
    # a message, so build the instance without __init__ and give it the text.
    exc = cls.__new__(cls)
    exc.args = (message,)
    # FeastError.__str__ prefers this attribute (Feast's own convention).
    try:
        exc.__overridden_message__ = message
    except AttributeError:
        pass
    return exc


class ClientGoneError(Exception):
    """The client cancelled the call, or its deadline passed."""


# Which Flight error class a failure of each kind becomes. Flight has no
# "invalid argument" or "not found" class, so bad requests are server errors
# whose detail (module, class, message, status) says exactly what was wrong.
_FLIGHT_ERROR_FOR_STATUS: dict[str, type[flight.FlightError]] = {
    INVALID_ARGUMENT: flight.FlightServerError,
    NOT_FOUND: flight.FlightServerError,
    UNIMPLEMENTED: flight.FlightServerError,
    RESOURCE_EXHAUSTED: flight.FlightUnavailableError,
    UNAVAILABLE: flight.FlightUnavailableError,
    UNAUTHENTICATED: flight.FlightUnauthenticatedError,
    PERMISSION_DENIED: flight.FlightUnauthorizedError,
    CANCELLED: flight.FlightCancelledError,
    DEADLINE_EXCEEDED: flight.FlightTimedOutError,
    INTERNAL: flight.FlightInternalError,
}


def failure_status(exc: BaseException) -> str:
    """What kind of failure ``exc`` is, in the vocabulary of flightlab.wire.errors."""
    from feast.errors import FeastObjectNotFoundException, FeastPermissionError
    from filelock import Timeout

    if isinstance(exc, FlightlabError):
        return exc.status
    if isinstance(exc, Timeout):  # another process holds a write lock: retry later
        return UNAVAILABLE
    if isinstance(exc, ClientGoneError):
        return CANCELLED
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
    from feast.errors import FeastError

    # Feast and pyarrow report bad input (an entity frame without a timestamp,
    # a column of the wrong type, an unknown ref, a data source whose file
    # does not exist) with these classes.
    return isinstance(
        exc, (FeastError, ValueError, KeyError, TypeError, FileNotFoundError, pa.ArrowException)
    )


def to_flight_error(exc: BaseException) -> flight.FlightError:
    """The Flight error a client receives for ``exc``: never a traceback."""
    if isinstance(exc, flight.FlightError) and not isinstance(exc, FlightlabError):
        return exc
    status = failure_status(exc)
    detail = encode_detail(error_detail(exc, status))
    error_class = _FLIGHT_ERROR_FOR_STATUS[status]
    # "Flight error: <json>" is the form Feast's own remote client parses.
    return error_class(f"Flight error: {detail}", extra_info=detail.encode())
