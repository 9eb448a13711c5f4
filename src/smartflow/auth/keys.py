"""Virtual keys: callers authenticate with ``sk-sf-...`` keys stored only as hashes."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from smartflow.core.errors import AuthenticationError

__all__ = ["KEY_PREFIX", "Caller", "KeyStore", "generate_key", "hash_key"]

KEY_PREFIX = "sk-sf-"


def hash_key(key: str) -> str:
    """Return the hex SHA-256 under which a key is stored.

    A plain hash suffices because keys carry 256 random bits, so they cannot be
    guessed from a leaked digest the way passwords can.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(slots=True, frozen=True)
class Caller:
    key_name: str
    team: str
    user: str | None
    labels: tuple[str, ...] = ()
    strict_params: bool = False
    identity: str | None = None
    """Salted hash of an intercepted caller's own provider key; None for virtual keys."""


class KeyStore:
    """Look up callers by the hash of the key they present."""

    def __init__(self, entries: Iterable[tuple[str, Caller]] = ()) -> None:
        self._by_hash: dict[str, Caller] = dict(entries)

    def __len__(self) -> int:
        return len(self._by_hash)

    def add(self, digest: str, caller: Caller) -> None:
        self._by_hash[digest] = caller

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        """Return the caller for the key in ``Authorization: Bearer`` or ``x-api-key``."""
        key = headers.get("x-api-key")
        if not key:
            authorization = headers.get("Authorization", "")
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                key = value.strip()
        if not key:
            raise AuthenticationError(
                "Missing API key. Send a Smartflow virtual key (sk-sf-...) as "
                "'Authorization: Bearer <key>' or in the 'x-api-key' header."
            )
        caller = self._by_hash.get(hash_key(key))
        if caller is None:
            hint = (
                "" if key.startswith(KEY_PREFIX) else " Smartflow virtual keys start with sk-sf-."
            )
            raise AuthenticationError(
                f"Invalid API key: no virtual key matches it.{hint} Check the key, or ask an "
                "administrator for one."
            )
        return caller
