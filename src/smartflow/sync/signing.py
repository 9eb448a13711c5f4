"""Ed25519 signing of snapshots: key files, key ids, signing and verification."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from smartflow.core.errors import ConfigError
from smartflow.sync.protocol import (
    SIGNATURE_DOMAIN,
    ProtocolError,
    Snapshot,
    SnapshotMessage,
    canonical_json,
)

__all__ = [
    "ALGORITHM",
    "SignatureError",
    "SigningKey",
    "VerifyKey",
    "key_id",
    "load_or_create_signing_key",
    "sign_canonical_snapshot",
    "sign_snapshot",
    "verify_snapshot",
]

logger = logging.getLogger(__name__)

ALGORITHM = "ed25519"
PRIVATE_KEY_FILE = "snapshot-signing.key"
PUBLIC_KEY_FILE = "snapshot-signing.pub"


class SignatureError(ValueError):
    """A snapshot whose signature is missing, malformed, from an unknown key, or invalid."""


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return ``ed25519:`` and the first 16 bytes of the SHA-256 of the raw public key, in hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{ALGORITHM}:{hashlib.sha256(raw).hexdigest()[:32]}"


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """A public key that snapshots are verified with."""

    public_key: Ed25519PublicKey
    key_id: str

    @classmethod
    def from_base64(cls, text: str) -> VerifyKey:
        """Read a raw 32-byte public key in standard base64, as the control plane publishes it.

        Raises:
            SignatureError: the text is not base64 of 32 bytes.
        """
        try:
            raw = base64.b64decode(text, validate=True)
            public_key = Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError) as exc:
            raise SignatureError(f"invalid Ed25519 public key: {exc}") from exc
        return cls(public_key, key_id(public_key))

    def to_base64(self) -> str:
        raw = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode("ascii")

    def verify(self, signature: bytes, data: bytes) -> None:
        """Raise SignatureError unless ``signature`` is this key's signature of ``data``."""
        try:
            self.public_key.verify(signature, data)
        except InvalidSignature:
            raise SignatureError(
                f"snapshot signature does not verify with key {self.key_id}"
            ) from None


@dataclass(frozen=True, slots=True)
class SigningKey:
    """The control plane's private key."""

    private_key: Ed25519PrivateKey

    @property
    def verify_key(self) -> VerifyKey:
        public_key = self.private_key.public_key()
        return VerifyKey(public_key, key_id(public_key))

    @property
    def key_id(self) -> str:
        return self.verify_key.key_id

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)


def load_or_create_signing_key(directory: Path) -> SigningKey:
    """Load the key pair from ``directory``, or generate and store it on first use.

    The private key is written as unencrypted PKCS #8 PEM with mode 0600; a copy of the
    public key goes beside it for operators. A private key file that others can read is
    used, with a warning.

    Raises:
        ConfigError: the key file cannot be read, written or parsed.
    """
    path = directory / PRIVATE_KEY_FILE
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        return _create_signing_key(directory)
    except OSError as exc:
        raise ConfigError(f"cannot read the snapshot signing key {path}: {exc}") from exc
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning(
            "snapshot signing key %s has mode %o; run `chmod 600 %s` so only its owner reads it",
            path,
            mode,
            path,
        )
    try:
        private_key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid snapshot signing key in {path}: {exc}") from exc
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ConfigError(f"snapshot signing key {path} is not an Ed25519 key")
    key = SigningKey(private_key)
    logger.info("loaded snapshot signing key %s from %s", key.key_id, path)
    return key


def _create_signing_key(directory: Path) -> SigningKey:
    key = SigningKey(Ed25519PrivateKey.generate())
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = directory / PRIVATE_KEY_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_EXCL: never overwrite a key that another process created meanwhile.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
        public_pem = key.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (directory / PUBLIC_KEY_FILE).write_bytes(public_pem)
    except FileExistsError:
        return load_or_create_signing_key(directory)
    except OSError as exc:
        raise ConfigError(f"cannot write the snapshot signing key {path}: {exc}") from exc
    logger.info("generated snapshot signing key %s in %s", key.key_id, path)
    return key


def sign_snapshot(snapshot: Mapping[str, Any], key: SigningKey) -> SnapshotMessage:
    """Sign snapshot data and return the message that carries it."""
    data = dict(snapshot)
    signature = key.sign(SIGNATURE_DOMAIN + canonical_json(data))
    return SnapshotMessage(
        key_id=key.key_id,
        signature=base64.b64encode(signature).decode("ascii"),
        snapshot=data,
    )


def sign_canonical_snapshot(canonical_snapshot: bytes, key: SigningKey) -> str:
    """Sign a snapshot already serialised by ``canonical_json`` and return the JSON text
    of the message that carries it.

    This is :func:`sign_snapshot` without parsing the snapshot again: the message embeds
    the canonical bytes unchanged, so a receiver that parses the message and serialises
    ``snapshot`` with ``canonical_json`` gets back the signed bytes.
    """
    signature = key.sign(SIGNATURE_DOMAIN + canonical_snapshot)
    message = {
        "type": "snapshot",
        "key_id": key.key_id,
        "signature": base64.b64encode(signature).decode("ascii"),
        "snapshot": orjson.Fragment(canonical_snapshot),
    }
    return orjson.dumps(message).decode("utf-8")


def verify_snapshot(message: SnapshotMessage, trusted: Mapping[str, VerifyKey]) -> Snapshot:
    """Verify a snapshot message against trusted keys (by key id) and return its snapshot.

    Raises:
        SignatureError: unknown key id, or a malformed or wrong signature.
        ProtocolError: the signature verifies but the snapshot does not match the schema.
    """
    verify_key = trusted.get(message.key_id)
    if verify_key is None:
        known = ", ".join(sorted(trusted)) or "none"
        raise SignatureError(
            f"snapshot signed with unknown key {message.key_id!r} (trusted: {known})"
        )
    try:
        signature = base64.b64decode(message.signature, validate=True)
    except binascii.Error as exc:
        raise SignatureError(f"snapshot signature is not valid base64: {exc}") from exc
    verify_key.verify(signature, SIGNATURE_DOMAIN + canonical_json(message.snapshot))
    try:
        return Snapshot.model_validate(message.snapshot)
    except ValidationError as exc:
        raise ProtocolError(f"signed snapshot does not match the snapshot schema: {exc}") from exc
