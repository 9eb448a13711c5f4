"""Encryption of provider credentials at rest, with Fernet keys from a variable or a file."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from smartflow.core.errors import ConfigError

__all__ = ["SecretBox", "SecretDecryptionError", "load_secret_box"]

logger = logging.getLogger(__name__)


class SecretDecryptionError(Exception):
    """Stored credentials that none of the configured keys decrypts."""


class SecretBox:
    """Encrypts JSON objects of strings with the newest key; decrypts with any key.

    Several keys allow rotation: put a new key first, and older ones still decrypt.
    NOTE: stored values are re-encrypted only when they are written again; there is no
    bulk re-encryption command yet.
    """

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("SecretBox needs at least one key")
        self._fernet = MultiFernet([Fernet(key) for key in keys])
        self._newest_key = keys[0]

    def derive_fernet_key(self, purpose: str) -> bytes:
        """Derive a Fernet key for ``purpose`` from the newest key with HKDF-SHA256.

        Values encrypted with a derived key cannot be decrypted after a key rotation.
        """
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
        return base64.urlsafe_b64encode(hkdf.derive(base64.urlsafe_b64decode(self._newest_key)))

    def encrypt(self, values: Mapping[str, str]) -> str:
        return self._fernet.encrypt(orjson.dumps(dict(values))).decode("ascii")

    def decrypt(self, token: str) -> dict[str, str]:
        try:
            data = orjson.loads(self._fernet.decrypt(token.encode("ascii")))
        except InvalidToken:
            raise SecretDecryptionError(
                "stored credentials cannot be decrypted with the configured secret key(s); "
                "the key that encrypted them is missing"
            ) from None
        if not isinstance(data, dict):
            raise SecretDecryptionError("decrypted credentials are not a JSON object")
        return {str(key): str(value) for key, value in data.items()}


def _parse_keys(text: str, source: str) -> list[bytes]:
    keys = [part.strip().encode("ascii") for part in text.replace(",", "\n").splitlines()]
    keys = [key for key in keys if key]
    if not keys:
        raise ConfigError(f"no secret key in {source}")
    for key in keys:
        try:
            Fernet(key)
        except ValueError:
            raise ConfigError(
                f"invalid secret key in {source}: each key must be 32 bytes in URL-safe "
                "base64 (44 characters), as `python -c 'from cryptography.fernet import "
                "Fernet; print(Fernet.generate_key().decode())'` prints"
            ) from None
    return keys


def load_secret_box(env_name: str, key_file: Path) -> SecretBox:
    """Read the keys from the variable ``env_name``, else from ``key_file``.

    When neither exists, generate a key into ``key_file`` with mode 0600 and warn that
    it sits beside the data it protects.

    Raises:
        ConfigError: a key is invalid, or the key file cannot be read or written.
    """
    text = os.environ.get(env_name, "").strip()
    if text:
        logger.info("using the credential encryption key(s) from $%s", env_name)
        return SecretBox(_parse_keys(text, f"${env_name}"))
    try:
        return SecretBox(_parse_keys(key_file.read_text(encoding="ascii"), str(key_file)))
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the secret key file {key_file}: {exc}") from exc
    key = Fernet.generate_key()
    try:
        key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(key + b"\n")
    except FileExistsError:
        return load_secret_box(env_name, key_file)
    except OSError as exc:
        raise ConfigError(f"cannot write the secret key file {key_file}: {exc}") from exc
    logger.warning(
        "generated a credential encryption key in %s; it sits beside the store it protects, "
        "so in production set $%s or keep the file on other storage",
        key_file,
        env_name,
    )
    return SecretBox([key])
