"""Dashboard sessions: an admin token kept encrypted in an HttpOnly, SameSite=Strict cookie.

The cookie contains the token encrypted with a Fernet key derived from the control plane's
secret key, so every control-plane process that shares the secret key accepts it and a
restart does not sign the browser out. The token inside is authenticated again on each
request, so deleting the admin token ends its sessions at once.
"""

from __future__ import annotations

from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

from smartflow.control.store.crypto import SecretBox
from smartflow.core.errors import AuthenticationError

__all__ = [
    "SESSION_COOKIE",
    "SESSION_KEY",
    "SESSION_KEY_PURPOSE",
    "SessionCodec",
    "session_token",
]

SESSION_COOKIE = "sf_dashboard_session"
SESSION_KEY_PURPOSE = "smartflow dashboard session cookie v1"
"""HKDF info string of the cookie key; changing it signs every browser out."""


class SessionCodec:
    """Encrypts an admin token into a cookie value and decrypts it within the session TTL."""

    def __init__(self, key: bytes, ttl_s: int) -> None:
        self._fernet = Fernet(key)
        self.ttl_s = ttl_s

    @classmethod
    def from_secret_box(cls, box: SecretBox, ttl_s: int) -> SessionCodec:
        return cls(box.derive_fernet_key(SESSION_KEY_PURPOSE), ttl_s)

    def encode(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode("ascii")

    def decode(self, value: str) -> str:
        """Return the admin token in ``value``.

        Raises:
            AuthenticationError: the value is expired, altered, or made with another key.
        """
        try:
            return self._fernet.decrypt(value.encode("ascii"), ttl=self.ttl_s).decode()
        except (InvalidToken, UnicodeError):
            raise AuthenticationError(
                "dashboard session expired or invalid; sign in again at /dashboard/login"
            ) from None

    def set_cookie(self, response: web.StreamResponse, token: str, *, secure: bool) -> None:
        # No Max-Age: the browser drops the cookie when it closes; the TTL check in
        # decode() ends the session earlier when the browser stays open.
        response.set_cookie(
            SESSION_COOKIE,
            self.encode(token),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=secure,
        )


SESSION_KEY: web.AppKey[SessionCodec] = web.AppKey("dashboard_session", SessionCodec)


def session_token(request: web.Request) -> str | None:
    """Return the admin token of the request's dashboard session, or None without a cookie.

    Raises:
        AuthenticationError: the cookie is present but expired or invalid, or this
            application serves no dashboard.
    """
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return None
    codec = request.app.get(SESSION_KEY)
    if codec is None:
        raise AuthenticationError("this control plane serves no dashboard sessions")
    return codec.decode(value)
