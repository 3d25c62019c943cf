"""How an error crosses the wire: its Flight error class and its JSON detail.

An error travels as a small JSON *detail* ``{"module", "class", "message",
"status"}``: the first three are the convention Feast's own remote offline
store uses, so Feast's exceptions (``FeatureViewNotFoundException``...) are
raised again on the client as themselves. ``status`` is the kind of failure
(:mod:`flightlab.errors`), which decides the Flight error class the call
fails with.

flightlab's own errors know nothing of Flight. A client gets each of them as
the class of the same name in this module (``flightlab.wire.flight_errors.
UnknownCommandError``, say): a subclass of both the error
(:class:`flightlab.errors.UnknownCommandError`) and the Flight class of its
kind, so ``except UnknownCommandError`` and ``except
pyarrow.flight.FlightServerError`` both catch it, on flightlab's client and on
Feast's stock client, which imports the class a detail names.
"""

from __future__ import annotations

import importlib
import json
import threading
from typing import Any

import pyarrow.flight as flight

from flightlab import errors
from flightlab.errors import (
    MAX_DETAIL_BYTES,
    PERMISSION_DENIED,
    FlightlabError,
    RemoteServerError,
    class_for,
    failure_status,
    shortened,
)

# Which Flight error class a failure of each kind becomes. Flight has no
# "invalid argument" or "not found" class, so bad requests are server errors
# whose detail (module, class, message, status) says exactly what was wrong.
FLIGHT_CLASS_FOR_STATUS: dict[str, type[flight.FlightError]] = {
    errors.INVALID_ARGUMENT: flight.FlightServerError,
    errors.NOT_FOUND: flight.FlightServerError,
    errors.UNIMPLEMENTED: flight.FlightServerError,
    errors.RESOURCE_EXHAUSTED: flight.FlightUnavailableError,
    errors.UNAVAILABLE: flight.FlightUnavailableError,
    errors.UNAUTHENTICATED: flight.FlightUnauthenticatedError,
    errors.PERMISSION_DENIED: flight.FlightUnauthorizedError,
    errors.CANCELLED: flight.FlightCancelledError,
    errors.DEADLINE_EXCEEDED: flight.FlightTimedOutError,
    errors.INTERNAL: flight.FlightInternalError,
}

# Modules whose exception classes a client is willing to re-create from a
# detail sent by a server: never import an arbitrary module named on the wire.
_TRUSTED_MODULE_PREFIXES = ("feast.", "flightlab.", "builtins", "pyarrow.", "ibis.")

# A class whose Flight class is not its status's: an error the client cannot
# place is a server error, as it was before errors had statuses.
_FLIGHT_CLASS_OF: dict[type, type[flight.FlightError]] = {
    RemoteServerError: flight.FlightServerError,
}

_FLIGHT_CLASSES: dict[type, type] = {}
_FLIGHT_CLASSES_LOCK = threading.Lock()


def flight_class(cls: type[FlightlabError]) -> type:
    """``cls`` as it reaches a client: a subclass of it and of its Flight class,
    defined in this module under the same name."""
    if cls.__module__ == __name__:
        return cls
    # One class per error, whichever thread asks first: `except` compares classes.
    with _FLIGHT_CLASSES_LOCK:
        made = _FLIGHT_CLASSES.get(cls)
        if made is None:
            flight_base = _FLIGHT_CLASS_OF.get(cls) or FLIGHT_CLASS_FOR_STATUS[cls.status]
            # pyarrow's FlightError sets extra_info in __init__; a copy re-created
            # from the wire (by Feast's client, without __init__) still has one.
            attributes = {"__module__": __name__, "__doc__": cls.__doc__, "extra_info": b""}
            if "__init__" in vars(cls):  # keep the error's own constructor
                attributes["__init__"] = vars(cls)["__init__"]
            made = _FLIGHT_CLASSES[cls] = type(cls.__name__, (cls, flight_base), attributes)
        return made


def __getattr__(name: str) -> Any:
    """``flightlab.wire.flight_errors.<Name>``: the Flight form of the error of
    that name in :mod:`flightlab.errors` (what a detail names)."""
    try:
        cls = getattr(errors, name)
    except AttributeError:
        cls = None
    if isinstance(cls, type) and issubclass(cls, FlightlabError):
        return flight_class(cls)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def as_flight_error(exc: FlightlabError) -> Exception:
    """The Flight form of an error raised on the client side."""
    cls = flight_class(type(exc))
    if isinstance(exc, cls):
        return exc
    return _instance_without_init(cls, str(exc))


# --- the server's side ---------------------------------------------------------------


def error_detail(exc: BaseException, status: str) -> dict[str, str]:
    """The wire form of ``exc``, at most MAX_DETAIL_BYTES once encoded."""
    cls = class_for(exc, status)
    if issubclass(cls, FlightlabError):
        cls = flight_class(cls)
    detail = {"module": cls.__module__, "class": cls.__name__, "message": "", "status": status}
    room = MAX_DETAIL_BYTES - len(encode_detail(detail))
    detail["message"] = shortened(_message(exc), max_bytes=room) or cls.__name__
    return detail


def _message(exc: BaseException) -> str:
    # str(KeyError("x")) is "'x'": send "x", or the KeyError re-created on the
    # client would print "\"'x'\"", a pair of quotes more than locally.
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


def encode_detail(detail: dict[str, str]) -> str:
    return json.dumps(detail, sort_keys=True)


def to_flight_error(exc: BaseException) -> flight.FlightError:
    """The Flight error a client receives for ``exc``: never a traceback."""
    if isinstance(exc, flight.FlightError) and not isinstance(exc, FlightlabError):
        return exc
    status = failure_status(exc)
    detail = encode_detail(error_detail(exc, status))
    # "Flight error: <json>" is the form Feast's own remote client parses.
    return FLIGHT_CLASS_FOR_STATUS[status](f"Flight error: {detail}", extra_info=detail.encode())


# --- the client's side ---------------------------------------------------------------


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

    Feast's and flightlab's own classes come back as themselves (flightlab's
    in their Flight form); anything else becomes a :class:`RemoteServerError`
    naming the original class.
    """
    message = detail["message"]
    cls = _trusted_exception_class(detail["module"], detail["class"])
    if cls is None:
        return flight_class(RemoteServerError)(f"{detail['class']}: {message}")
    if detail.get("status") == PERMISSION_DENIED and not issubclass(cls, FlightlabError):
        # Feast's FeastPermissionError, which a caller may also catch as
        # Flight's FlightUnauthorizedError.
        cls = errors.PermissionDeniedError
    if issubclass(cls, FlightlabError):
        cls = flight_class(cls)
    return _instance_without_init(cls, message)


def _trusted_exception_class(module_name: str, class_name: str) -> type | None:
    if not module_name.startswith(_TRUSTED_MODULE_PREFIXES):
        return None
    try:
        cls: Any = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        # A server of another version may name a flightlab module that has
        # moved (flightlab.wire.errors, before flightlab.errors): the class by its name.
        cls = getattr(errors, class_name, None) if module_name.startswith("flightlab.") else None
    return cls if isinstance(cls, type) and issubclass(cls, Exception) else None


def _instance_without_init(cls: type, message: str) -> Exception:
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
