"""The listener's TLS setup: one certificate per host, chosen by SNI, and ALPN."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path

from smartflow.config.intercept import CertificateSettings
from smartflow.core.errors import ConfigError
from smartflow.intercept.certs import certificate_hosts, read_passphrase

__all__ = ["ServerTLS", "name_matches"]

logger = logging.getLogger(__name__)


def name_matches(pattern: str, host: str) -> bool:
    """Match ``host`` against a certificate name, where ``*.`` covers one label."""
    if pattern == host:
        return True
    if pattern.startswith("*."):
        label, _, rest = host.partition(".")
        return bool(label) and rest == pattern[2:]
    return False


def _load_context(
    settings: CertificateSettings, alpn: list[str], environ: Mapping[str, str] | None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    password = read_passphrase(settings.key_passphrase_env, settings.key_passphrase_file, environ)
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file, password=password)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the certificate {settings.cert_file} with key {settings.key_file}: "
            f"{exc}. Check the paths, that the key matches the certificate, and its passphrase"
        ) from exc
    context.set_alpn_protocols(alpn)
    return context


class ServerTLS:
    """Server contexts for the intercepted hosts; ``context`` is the one to listen with.

    Each certificate gets its own context. The SNI callback switches a connection to the
    context whose certificate names the requested host, and rejects names no
    certificate covers. A client that sends no SNI gets the first certificate.
    """

    def __init__(
        self,
        certificates: list[CertificateSettings],
        hosts: Iterable[str],
        *,
        http2: bool,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        alpn = ["h2", "http/1.1"] if http2 else ["http/1.1"]
        loaded = [
            (_load_context(c, alpn, environ), certificate_hosts(Path(c.cert_file)))
            for c in certificates
        ]
        self._by_host: dict[str, ssl.SSLContext] = {}
        for host in hosts:
            for context, names in loaded:
                if any(name_matches(name, host) for name in names):
                    self._by_host[host] = context
                    break
            else:
                raise ConfigError(
                    f"no certificate in intercept.certificates names {host} in its "
                    f"subjectAltName; issue one with `smartflow certs issue {host}`"
                )
        self.context = _load_context(certificates[0], alpn, environ)
        self._default_names = loaded[0][1]
        self.context.sni_callback = self._select

    def _select(
        self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        if server_name is None:
            return None
        context = self._by_host.get(server_name.lower())
        if context is None:
            logger.info("intercept: TLS client asked for unknown host %r", server_name[:200])
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        connection.context = context
        return None

    def serves(self, ssl_object: ssl.SSLObject | None, host: str) -> bool:
        """Return whether ``host`` is the one the TLS connection was set up for."""
        if ssl_object is None:
            return True
        context = ssl_object.context
        if context is self.context:
            return any(name_matches(name, host) for name in self._default_names)
        return self._by_host.get(host) is context
