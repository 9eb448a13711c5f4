"""A private certificate authority for labs and tests, and the leaf certificates it issues.

Production installs use certificates from the organisation's own CA instead; the
listener loads either kind the same way (``intercept.certificates`` in the config).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from smartflow.core.errors import ConfigError

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CertificateAuthority",
    "IssuedLeaf",
    "certificate_hosts",
    "create_ca",
    "issue_leaf",
    "load_ca",
    "read_passphrase",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"

CA_DAYS = 3650
LEAF_DAYS = 397
"""Default leaf lifetime. Apple platforms reject TLS server certificates valid for more
than 398 days when they chain to a public root, and browsers follow the same limit."""

_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(slots=True, frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(slots=True, frozen=True)
class IssuedLeaf:
    cert_file: Path
    key_file: Path
    hosts: tuple[str, ...]


def read_passphrase(
    env: str | None,
    file: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    what: str = "passphrase",
) -> bytes | None:
    """Read a secret, such as a key passphrase, from the named variable or file, if any.

    Raises:
        ConfigError: the variable is unset or empty, or the file cannot be read or is empty.
    """
    if env and file:
        raise ConfigError(f"name the {what}'s environment variable or its file, not both")
    if env:
        value = (os.environ if environ is None else environ).get(env, "")
        if not value:
            raise ConfigError(f"the {what} variable {env} is not set or empty")
        return value.encode("utf-8")
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the {what} file {file}: {exc.strerror}") from exc
        if not text:
            raise ConfigError(f"the {what} file {file} is empty")
        return text.encode("utf-8")
    return None


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a file only its owner can read, replacing an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # The mode given to open does not apply to a file that already existed.
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def create_ca(
    directory: Path,
    *,
    name: str = "Smartflow interception CA",
    days: int = CA_DAYS,
    passphrase: bytes | None = None,
    overwrite: bool = False,
) -> CertificateAuthority:
    """Create a self-signed CA in ``directory``: ``ca.pem`` and ``ca-key.pem`` (mode 0600).

    Raises:
        ConfigError: the CA files exist and ``overwrite`` is false.
    """
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not overwrite and (cert_path.exists() or key_path.exists()):
        raise ConfigError(
            f"{directory} already contains a CA ({CA_CERT_FILE}, {CA_KEY_FILE}); pass --force "
            "to replace it, which invalidates every certificate it issued"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Smartflow"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    _write_private(key_path, _key_pem(key, passphrase))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return CertificateAuthority(certificate, key)


def load_ca(directory: Path, passphrase: bytes | None = None) -> CertificateAuthority:
    """Load the CA that ``create_ca`` wrote to ``directory``.

    Raises:
        ConfigError: a file is missing or unreadable, or the passphrase is missing or wrong.
    """
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key_data = key_path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the CA in {directory}: {exc.strerror} ({exc.filename}); create one "
            "with `smartflow certs init`"
        ) from exc
    try:
        key = serialization.load_pem_private_key(key_data, password=passphrase)
    except TypeError as exc:
        hint = "it is encrypted: name its passphrase" if not passphrase else "it is not encrypted"
        raise ConfigError(f"cannot load {key_path}: {hint} ({exc})") from exc
    except ValueError as exc:
        raise ConfigError(f"cannot load {key_path}: wrong passphrase or invalid key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path} is not an EC private key made by `smartflow certs init`")
    return CertificateAuthority(certificate, key)


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_leaf(
    ca: CertificateAuthority,
    hosts: list[str],
    out_dir: Path,
    *,
    days: int = LEAF_DAYS,
) -> IssuedLeaf:
    """Issue one server certificate for ``hosts`` and write it with its key (mode 0600).

    The files are named after the first host: ``HOST.pem`` and ``HOST-key.pem``.
    """
    if not hosts:
        raise ConfigError("name at least one host, such as api.openai.com")
    names = [host.strip().lower().rstrip(".") for host in hosts]
    for name in names:
        if not name or any(c in name for c in "/: @"):
            raise ConfigError(f"{name!r} is not a host name or IP address")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca_public = ca.key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san_entry(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = names[0].replace("*", "_wildcard")
    cert_file, key_file = out_dir / f"{stem}.pem", out_dir / f"{stem}-key.pem"
    _write_private(key_file, _key_pem(key, None))
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return IssuedLeaf(cert_file, key_file, tuple(names))


def certificate_hosts(cert_file: Path) -> list[str]:
    """Return the DNS names and IP addresses in the subjectAltName of a PEM certificate.

    Raises:
        ConfigError: the file cannot be read or contains no certificate.
    """
    try:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the certificate {cert_file}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{cert_file} does not start with a PEM certificate: {exc}") from exc
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    names += [str(address) for address in san.get_values_for_type(x509.IPAddress)]
    return names
