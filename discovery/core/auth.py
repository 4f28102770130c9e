"""The write-secret check shared by the gRPC servicer (in each write handler) and the REST guard."""

from __future__ import annotations

import hmac

from discovery.core.errors import InvalidSecret, MalformedCredentials, MissingCredentials


class Authenticator:
    """Checks `Authorization: Bearer <secret>` values. With no secret, every write is allowed."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str | None) -> None:
        self._secret = secret.encode() if secret else None

    @property
    def open(self) -> bool:
        """True when no secret is configured."""
        return self._secret is None

    def check(self, authorization: str | None) -> None:
        """Raise an `AuthError` unless `authorization` carries the configured secret."""
        if self._secret is None:
            return
        if authorization is None or not authorization.strip():
            raise MissingCredentials()
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise MalformedCredentials()
        # compare_digest takes time independent of where the values differ.
        if not hmac.compare_digest(token.encode(), self._secret):
            raise InvalidSecret()
