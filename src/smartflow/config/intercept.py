"""The ``intercept:`` section: the TLS listener that serves provider hosts such as
api.openai.com for callers whose DNS points those names at this instance."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DEFAULT_HOSTS",
    "CertificateSettings",
    "IdentityMapping",
    "IdentitySettings",
    "InterceptHostSettings",
    "InterceptSettings",
    "parse_address",
]

IdentityMode = Literal["passthrough", "organisation", "smartflow_key"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """Split ``203.0.113.7``, ``203.0.113.7:8443`` or ``[2001:db8::7]:443`` into (ip, port).

    Raises:
        ValueError: the text is not an IP address with an optional port.
    """
    value = text.strip()
    port = default_port
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected [IPv6]:PORT")
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        port = int(port_text)
    else:
        host = value
    address = ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: the port must be between 1 and 65535")
    return str(address), port


def _check_addresses(values: list[str], default_port: int, what: str) -> list[str]:
    for value in values:
        try:
            parse_address(value, default_port)
        except ValueError as exc:
            raise ValueError(
                f"{value!r} is not {what}: give an IP address, optionally with a port, such "
                f"as 203.0.113.7, 203.0.113.7:{default_port} or [2001:db8::7]:{default_port} "
                f"({exc})"
            ) from exc
    return values


class CertificateSettings(_Strict):
    """A PEM certificate chain and its private key, served to the hosts it names."""

    cert_file: str
    key_file: str
    key_passphrase_env: str | None = None
    """Environment variable with the passphrase of an encrypted ``key_file``."""
    key_passphrase_file: str | None = None
    """File with the passphrase of an encrypted ``key_file``."""

    @model_validator(mode="after")
    def _one_passphrase_source(self) -> CertificateSettings:
        if self.key_passphrase_env and self.key_passphrase_file:
            raise ValueError("set 'key_passphrase_env' or 'key_passphrase_file', not both")
        return self


class InterceptHostSettings(_Strict):
    """One provider host served by the listener."""

    dialect: Literal["openai", "anthropic"]
    """The API the host speaks. ``openai`` also fits an Azure OpenAI resource host, whose
    own paths are passed through with policy on the chat bodies in them."""
    addresses: list[str] = []
    """Fixed upstream addresses of the real host (IP, optionally with a port). Without
    them, the host is resolved through ``intercept.nameservers``."""
    identity: IdentityMode = "passthrough"
    """``passthrough``: the caller's provider key goes upstream and a salted hash of it
    identifies the caller. ``organisation``: the caller is identified the same way, and an
    organisation key replaces theirs upstream. ``smartflow_key``: the caller must send a
    Smartflow virtual key in ``identity.smartflow_key_header``; an organisation key, if
    configured, replaces theirs upstream."""
    organisation_key_env: str | None = None
    """Environment variable with the organisation's key for this host. An identity
    mapping's own ``organisation_key_env`` takes precedence."""

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        return _check_addresses(values, 443, "an upstream address")


class IdentityMapping(_Strict):
    """A known intercepted caller: the identity hash of their provider key."""

    identity: str
    """The hex identity hash, printed by ``smartflow keys identity`` for a key."""
    team: str = "default"
    user: str | None = None
    labels: list[str] = []
    organisation_key_env: str | None = None
    """For hosts in ``organisation`` mode: the variable with the key this caller's
    requests use upstream, such as a key billed to their team."""

    @field_validator("identity")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError(
                "must be the 64-character hex identity hash; get it with `smartflow keys identity`"
            )
        return value


class IdentitySettings(_Strict):
    salt_env: str | None = None
    """Environment variable with the secret salt of identity hashes. Required when a host
    identifies callers by their provider key."""
    salt_file: str | None = None
    """File with the secret salt, in place of ``salt_env``."""
    unknown_callers: Literal["audit", "reject"] = "audit"
    """A caller whose hash has no mapping: ``audit`` serves and records them under team
    ``unknown_team``; ``reject`` rejects them with 401."""
    unknown_team: str = "intercepted-unknown"
    mappings: list[IdentityMapping] = []
    smartflow_key_header: str = "x-smartflow-key"
    """The header that carries the Smartflow virtual key for hosts in ``smartflow_key``
    mode. It is removed before the request goes upstream."""

    @model_validator(mode="after")
    def _one_salt_source(self) -> IdentitySettings:
        if self.salt_env and self.salt_file:
            raise ValueError("set 'salt_env' or 'salt_file', not both")
        return self


DEFAULT_HOSTS = {
    "api.openai.com": InterceptHostSettings(dialect="openai"),
    "api.anthropic.com": InterceptHostSettings(dialect="anthropic"),
}


class InterceptSettings(_Strict):
    """The interception listener; see docs/interception.md."""

    enabled: bool = False
    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 serves every interface."""
    port: int = Field(443, ge=0, le=65535)
    http2: bool = True
    """Offer HTTP/2 through ALPN; HTTP/1.1 is always served."""
    certificates: list[CertificateSettings] = []
    """Certificates for the hosts; each is served for the names in its subjectAltName."""
    hosts: dict[str, InterceptHostSettings] = dict(DEFAULT_HOSTS)
    """Hosts served, by name. Listing hosts replaces the two defaults, api.openai.com
    (openai) and api.anthropic.com (anthropic)."""
    nameservers: list[str] = []
    """DNS servers that resolve hosts without fixed ``addresses``. Never the system's
    resolver, which points the hosts back at this instance."""
    upstream_ca_file: str | None = None
    """PEM bundle that verifies the real hosts' certificates; default: the system's."""
    hop_id: str | None = None
    """Value of the ``x-smartflow-hop`` header this instance adds upstream; default:
    ``server.instance``."""
    identity: IdentitySettings = IdentitySettings()

    @field_validator("hosts")
    @classmethod
    def _host_names(
        cls, values: dict[str, InterceptHostSettings]
    ) -> dict[str, InterceptHostSettings]:
        names = {}
        for name, settings in values.items():
            host = name.strip().lower().rstrip(".")
            if not host or any(c in host for c in "/:@* "):
                raise ValueError(f"{name!r} is not a host name such as api.openai.com")
            names[host] = settings
        return names

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, values: list[str]) -> list[str]:
        return _check_addresses(values, 53, "a name server")

    @model_validator(mode="after")
    def _check(self) -> InterceptSettings:
        if not self.enabled:
            return self
        if not self.certificates:
            raise ValueError(
                "'certificates' is required when the listener is enabled: list the "
                "cert_file and key_file that cover the hosts (`smartflow certs issue` makes "
                "them for a lab)"
            )
        if not self.hosts:
            raise ValueError("list at least one host in 'hosts'")
        for name, host in self.hosts.items():
            if not host.addresses and not self.nameservers:
                raise ValueError(
                    f"hosts.{name}: set 'addresses' (the real host's IPs) or "
                    "intercept.nameservers; the system resolver would send requests back here"
                )
            if host.identity != "smartflow_key" and not (
                self.identity.salt_env or self.identity.salt_file
            ):
                raise ValueError(
                    f"hosts.{name}: identity {host.identity!r} hashes the caller's key, so "
                    "set identity.salt_env or identity.salt_file to a secret salt"
                )
            if host.identity == "organisation" and not host.organisation_key_env:
                mapped = all(m.organisation_key_env for m in self.identity.mappings)
                if not mapped or self.identity.unknown_callers == "audit":
                    raise ValueError(
                        f"hosts.{name}: identity 'organisation' needs organisation_key_env on "
                        "the host, or on every identity mapping with unknown_callers 'reject'"
                    )
        return self
