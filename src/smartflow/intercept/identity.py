"""Identity of an intercepted caller, and the key their request carries upstream.

Callers of an intercepted host send their own provider key. It identifies them by an
HMAC-SHA256 under a secret salt (the identity hash), so neither the key nor an unsalted
digest of it is stored. Depending on the host's mode, the key then goes upstream, an
organisation key replaces it, or a Smartflow virtual key in a header identifies them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from smartflow.auth.keys import Caller, KeyStore
from smartflow.config.intercept import IdentityMapping, IdentityMode, IdentitySettings
from smartflow.core.errors import AuthenticationError, ConfigError
from smartflow.intercept.certs import read_passphrase

__all__ = [
    "CallerCredentials",
    "InterceptIdentity",
    "identity_hash",
    "load_salt",
    "provider_key",
]

logger = logging.getLogger(__name__)

INTERCEPTED_KEY_NAME = "intercepted"
"""``key_name`` of callers identified by their provider key, for policy scopes."""

# Headers that carry a provider credential, in the order they are looked at.
_CREDENTIAL_HEADERS = ("x-api-key", "api-key", "authorization")
_MAX_AUDIT_LOGGED = 10_000


def identity_hash(salt: bytes, key: str) -> str:
    """Return the hex HMAC-SHA256 of a provider key under the installation's salt."""
    return hmac.new(salt, key.encode("utf-8"), hashlib.sha256).hexdigest()


def load_salt(settings: IdentitySettings, environ: Mapping[str, str] | None = None) -> bytes | None:
    """Read the identity salt named by the settings, or None when none is named.

    Raises:
        ConfigError: the variable or file is named but empty or unreadable.
    """
    try:
        return read_passphrase(settings.salt_env, settings.salt_file, environ, what="salt")
    except ConfigError as exc:
        raise ConfigError(f"intercept.identity: {exc}") from exc


def provider_key(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """Return (header name, key) of the provider credential the caller sent, if any."""
    for name in _CREDENTIAL_HEADERS:
        value = headers.get(name, "").strip()
        if not value:
            continue
        if name == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                continue
            value = token.strip()
        return name, value
    return None


@dataclass(slots=True, frozen=True)
class CallerCredentials:
    """The credential headers an intercepted request carries upstream."""

    headers: dict[str, str]


class InterceptIdentity(KeyStore):
    """Authenticate the callers of one intercepted host; a drop-in for the key store.

    ``virtual_keys`` authenticates the Smartflow keys of hosts in ``smartflow_key`` mode.
    """

    def __init__(
        self,
        *,
        host: str,
        mode: IdentityMode,
        settings: IdentitySettings,
        salt: bytes | None,
        virtual_keys: KeyStore,
        organisation_key_env: str | None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if mode != "smartflow_key" and not salt:
            raise ConfigError(f"intercept.hosts.{host}: identity {mode!r} needs the salt")
        self.host = host
        self.mode = mode
        self._settings = settings
        self._salt = salt or b""
        self._virtual = virtual_keys
        self._mappings: dict[str, IdentityMapping] = {m.identity: m for m in settings.mappings}
        self._environ = os.environ if environ is None else environ
        self._default_key_env = organisation_key_env
        self._audited: set[str] = set()
        self._check_organisation_keys()

    def _check_organisation_keys(self) -> None:
        names = {self._default_key_env} if self._default_key_env else set()
        if self.mode == "organisation":
            names |= {
                m.organisation_key_env for m in self._mappings.values() if m.organisation_key_env
            }
        for name in sorted(names):
            if not self._environ.get(name):
                raise ConfigError(
                    f"intercept.hosts.{self.host}: the organisation key variable {name} is "
                    "not set or empty"
                )

    @property
    def key_header(self) -> str:
        """The header of the Smartflow key, removed from every upstream request."""
        return self._settings.smartflow_key_header

    def __len__(self) -> int:
        return len(self._mappings) + len(self._virtual)

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        """Return the caller of an intercepted request.

        Raises:
            AuthenticationError: the credential is missing, or the caller is unknown and
                unknown callers are rejected, or the Smartflow key is invalid.
        """
        if self.mode == "smartflow_key":
            return self._authenticate_virtual_key(headers)
        found = provider_key(headers)
        if found is None:
            raise AuthenticationError(
                f"Missing API key for {self.host}. Send your provider API key as "
                "'Authorization: Bearer <key>' or in the 'x-api-key' header."
            )
        digest = identity_hash(self._salt, found[1])
        mapping = self._mappings.get(digest)
        if mapping is not None:
            return Caller(
                INTERCEPTED_KEY_NAME,
                mapping.team,
                mapping.user,
                tuple(mapping.labels),
                identity=digest,
            )
        if self._settings.unknown_callers == "reject":
            raise AuthenticationError(
                f"This API key is not registered with your organisation's gateway for "
                f"{self.host} (identity {digest[:16]}). Ask an administrator to add the "
                "identity to intercept.identity.mappings."
            )
        if digest not in self._audited and len(self._audited) < _MAX_AUDIT_LOGGED:
            self._audited.add(digest)
            logger.info(
                "intercept: unknown caller identity %s on %s served in audit mode",
                digest[:16],
                self.host,
            )
        return Caller(INTERCEPTED_KEY_NAME, self._settings.unknown_team, None, identity=digest)

    def _authenticate_virtual_key(self, headers: Mapping[str, str]) -> Caller:
        header = self._settings.smartflow_key_header
        key = headers.get(header, "").strip()
        if not key:
            raise AuthenticationError(
                f"Missing Smartflow key: this gateway serves {self.host} only to callers that "
                f"send their Smartflow virtual key (sk-sf-...) in the '{header}' header."
            )
        return self._virtual.authenticate({"x-api-key": key})

    def upstream_credentials(
        self, headers: Mapping[str, str], default_header: str
    ) -> CallerCredentials:
        """Return the credential headers for the upstream request of this caller.

        An organisation key, where one applies, goes in the header the caller used for
        their own key, or in ``default_header`` when they sent none.
        """
        found = provider_key(headers)
        key_env = self._organisation_key_env(headers, found)
        if key_env is None:
            if found is None:
                return CallerCredentials({})
            name = found[0]
            return CallerCredentials({name: headers[name]})
        key = self._environ.get(key_env, "")
        name = found[0] if found is not None else default_header
        if name == "authorization":
            return CallerCredentials({"authorization": "Bearer " + key})
        return CallerCredentials({name: key})

    def _organisation_key_env(
        self, headers: Mapping[str, str], found: tuple[str, str] | None
    ) -> str | None:
        if self.mode == "passthrough":
            return None
        if self.mode == "organisation" and found is not None:
            mapping = self._mappings.get(identity_hash(self._salt, found[1]))
            if mapping is not None and mapping.organisation_key_env:
                return mapping.organisation_key_env
        return self._default_key_env
