"""Who is calling: authentication of every Flight call, with Feast's auth config.

The server reads ``auth`` from its repo's ``feature_store.yaml``, as Feast's own
servers do: ``no_auth`` lets everyone in anonymously; ``oidc`` and
``kubernetes`` require a bearer token on every call, validated by Feast's own
token parsers (JWKS signature and expiry for OIDC, a TokenReview for
Kubernetes). What the caller may then do is decided by the registry's
Permission objects, in :mod:`flightlab.dispatch.permissions`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import pyarrow.flight as flight

from flightlab.errors import AuthenticationFailedError, ProtocolVersionError
from flightlab.server.ownership import owner_key
from flightlab.wire.flight_errors import to_flight_error
from flightlab.wire.headers import AUTHORIZATION_HEADER, BEARER_PREFIX, PROTOCOL_HEADER
from flightlab.wire.version import check_client

logger = logging.getLogger(__name__)

# The key under which every call's CallMiddleware is registered.
CALL_MIDDLEWARE = "call"


class AuthConfigError(ValueError):
    """The repo's auth config cannot be served here."""


@dataclass(frozen=True)
class Caller:
    """The authenticated identity of one call.

    ``user`` is Feast's ``User`` (roles, groups, namespaces) or None when the
    server runs without authentication.
    """

    user: Any = None

    @property
    def name(self) -> str | None:
        return self.user.username if self.user is not None else None


ANONYMOUS = Caller()


class Authenticator:
    """Turns a call's headers into a :class:`Caller`, or refuses the call."""

    enforces_permissions = False

    def authenticate(self, headers: dict[str, list[str]]) -> Caller:
        return ANONYMOUS


class TokenAuthenticator(Authenticator):
    """Bearer tokens checked by one of Feast's ``TokenParser``s."""

    enforces_permissions = True

    def __init__(self, token_parser: Any, kind: str):
        self._parser = token_parser
        self.kind = kind

    def authenticate(self, headers: dict[str, list[str]]) -> Caller:
        token = bearer_token(headers)
        try:
            user = asyncio.run(self._parser.user_details_from_access_token(token))
        except Exception as exc:  # the parsers raise many kinds; all mean "no"
            logger.info("%s token refused: %s", self.kind, exc)
            reason = _expiry_reason(token) or _reason(exc)
            raise AuthenticationFailedError(f"invalid {self.kind} token: {reason}") from None
        return Caller(user)


def bearer_token(headers: dict[str, list[str]]) -> str:
    values = next((v for k, v in headers.items() if k.lower() == AUTHORIZATION_HEADER), None)
    if not values:
        raise AuthenticationFailedError("no credentials: send 'authorization: Bearer <token>'")
    value = values[0]
    if not value.lower().startswith(BEARER_PREFIX) or not value[len(BEARER_PREFIX) :].strip():
        raise AuthenticationFailedError("the authorization header is not 'Bearer <token>'")
    return value[len(BEARER_PREFIX) :].strip()


def authenticator_for(auth_config: Any) -> Authenticator:
    """The authenticator a repo's ``auth`` config asks for."""
    kind = getattr(auth_config, "type", "no_auth")
    if kind == "no_auth":
        return Authenticator()
    if kind == "oidc":
        from feast.permissions.auth.oidc_token_parser import OidcTokenParser

        return TokenAuthenticator(OidcTokenParser(auth_config=auth_config), "oidc")
    if kind == "kubernetes":
        # Needs the `kubernetes` package and an in-cluster service account.
        try:
            from feast.permissions.auth.kubernetes_token_parser import KubernetesTokenParser

            return TokenAuthenticator(KubernetesTokenParser(), "kubernetes")
        except ImportError as exc:
            raise AuthConfigError(
                f"auth type 'kubernetes' needs the {exc.name or 'kubernetes'!r} package "
                "(pip install kubernetes) and an in-cluster service account"
            ) from exc
        except Exception as exc:  # e.g. not running inside a cluster
            raise AuthConfigError(f"auth type 'kubernetes' cannot start here: {exc}") from exc
    raise AuthConfigError(f"unknown auth type {kind!r}: use no_auth, oidc or kubernetes")


class CallMiddleware(flight.ServerMiddleware):
    """Holds what the handlers of one call need: its caller and headers."""

    def __init__(self, caller: Caller, headers: dict[str, list[str]]):
        self.caller = caller
        self.headers = headers


class CallMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Authenticates every call, before any handler runs (list_actions too)."""

    def __init__(self, authenticator: Authenticator):
        super().__init__()
        self._authenticator = authenticator

    def start_call(self, info, headers):
        try:
            caller = self._authenticator.authenticate(headers)
            versions = headers.get(PROTOCOL_HEADER) or [None]
            check_client(versions[0])
        except (AuthenticationFailedError, ProtocolVersionError) as exc:
            raise to_flight_error(exc) from None
        return CallMiddleware(caller, headers)


def _call_middleware(context: Any) -> CallMiddleware | None:
    return context.get_middleware(CALL_MIDDLEWARE)


def caller_of(context: Any) -> Caller:
    """Who made the call ``context`` belongs to."""
    middleware = _call_middleware(context)
    return middleware.caller if middleware is not None else ANONYMOUS


def owner_of(context: Any) -> str:
    """Whose commands this call may see and run (see flightlab.server.ownership)."""
    middleware = _call_middleware(context)
    headers = middleware.headers if middleware is not None else {}
    return owner_key(caller_of(context).name, headers, context.peer())


def _expiry_reason(token: str) -> str | None:
    """Say "expired" when that is why: Feast's parsers only say "invalid"."""
    import jwt

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    expires = claims.get("exp")
    if isinstance(expires, (int, float)) and expires < time.time():
        return f"the token expired {int(time.time() - expires)} s ago"
    return None


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
