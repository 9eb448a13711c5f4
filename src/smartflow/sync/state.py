"""Files a linked instance keeps under its state directory: its enrollment and the last
good snapshot.

Both files are written atomically (temporary file, fsync, rename, fsync of the
directory) with mode 0600. Secrets in them are encrypted with Fernet keys from
``$SMARTFLOW_INSTANCE_SECRET_KEY`` or a generated key file, as the control plane does
for provider credentials: the instance credential, and the whole signed snapshot,
which carries the site's provider credentials.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from smartflow.control.store.crypto import SecretBox, SecretDecryptionError, load_secret_box
from smartflow.core.errors import ConfigError
from smartflow.sync.protocol import ProtocolError, Snapshot, SnapshotMessage, parse_server_message
from smartflow.sync.signing import SignatureError, VerifyKey, verify_snapshot

__all__ = [
    "ENROLLMENT_FILE",
    "SNAPSHOT_FILE",
    "Enrollment",
    "LinkFiles",
    "SavedSnapshot",
    "write_private_atomic",
]

logger = logging.getLogger(__name__)

LINK_DIR = "link"
ENROLLMENT_FILE = "enrollment.json"
SNAPSHOT_FILE = "snapshot.json"
SECRET_KEY_FILE = "secret.key"
_FORMAT = 1


class _EnrollmentFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = _FORMAT
    control_plane: str
    instance: str
    site: str
    key_id: str
    public_key: str
    credential: str
    """The instance credential, Fernet-encrypted."""


class _SnapshotFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = _FORMAT
    version: int
    last_contact: float
    """Unix time the link was last known live with this version applied."""
    message: str
    """The signed snapshot message as received, Fernet-encrypted."""


@dataclass(frozen=True, slots=True)
class Enrollment:
    """The enrollment record of an instance: its name, site, credential and trusted key."""

    control_plane: str
    instance: str
    site: str
    credential: str
    verify_key: VerifyKey


@dataclass(frozen=True, slots=True)
class SavedSnapshot:
    """The last good snapshot read back from disk, with its signature checked again."""

    message: SnapshotMessage
    snapshot: Snapshot
    last_contact: float


class LinkFiles:
    """The enrollment and snapshot files in ``state_dir/link``."""

    def __init__(self, state_dir: Path, secret_key_env: str) -> None:
        self.directory = state_dir / LINK_DIR
        self._secret_key_env = secret_key_env
        self._box: SecretBox | None = None

    @property
    def box(self) -> SecretBox:
        """The key(s) of this instance; a key file is generated on first use if needed."""
        if self._box is None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._box = load_secret_box(self._secret_key_env, self.directory / SECRET_KEY_FILE)
        return self._box

    # --- enrollment ---------------------------------------------------------------------

    def load_enrollment(self) -> Enrollment | None:
        """Return the stored enrollment, or None before the instance has enrolled.

        Raises:
            ConfigError: the file is unreadable, invalid, or its credential does not
                decrypt with the configured key(s).
        """
        path = self.directory / ENROLLMENT_FILE
        data = _read_json(path)
        if data is None:
            return None
        try:
            record = _EnrollmentFile.model_validate(data)
            credential = self.box.decrypt(record.credential)["credential"]
            verify_key = VerifyKey.from_base64(record.public_key)
        except (ValidationError, SecretDecryptionError, SignatureError, KeyError) as exc:
            raise ConfigError(
                f"invalid enrollment file {path}: {exc}; delete it and enroll the instance "
                "again with a new enrollment token"
            ) from exc
        if verify_key.key_id != record.key_id:
            raise ConfigError(f"invalid enrollment file {path}: the key id does not match the key")
        return Enrollment(
            record.control_plane, record.instance, record.site, credential, verify_key
        )

    def save_enrollment(self, enrollment: Enrollment) -> None:
        record = _EnrollmentFile(
            control_plane=enrollment.control_plane,
            instance=enrollment.instance,
            site=enrollment.site,
            key_id=enrollment.verify_key.key_id,
            public_key=enrollment.verify_key.to_base64(),
            credential=self.box.encrypt({"credential": enrollment.credential}),
        )
        write_private_atomic(self.directory / ENROLLMENT_FILE, record.model_dump_json().encode())
        logger.info(
            "stored the enrollment of instance %s (site %s) in %s",
            enrollment.instance,
            enrollment.site,
            self.directory,
        )

    # --- last good snapshot -----------------------------------------------------------------

    def load_snapshot(self, trusted: dict[str, VerifyKey]) -> SavedSnapshot | None:
        """Return the saved snapshot, verified again, or None when there is none.

        A file that cannot be used is logged and treated as missing, so the instance
        starts and waits for the control plane instead of failing.
        """
        path = self.directory / SNAPSHOT_FILE
        try:
            data = _read_json(path)
            if data is None:
                return None
            record = _SnapshotFile.model_validate(data)
            text = self.box.decrypt(record.message)["message"]
            message = parse_server_message(text)
            if not isinstance(message, SnapshotMessage):
                raise ProtocolError("the saved message is not a snapshot")
            snapshot = verify_snapshot(message, trusted)
        except (
            ConfigError,
            ValidationError,
            SecretDecryptionError,
            KeyError,
            ProtocolError,
            SignatureError,
        ) as exc:
            logger.error("ignoring the saved snapshot %s: %s", path, exc)
            return None
        return SavedSnapshot(message, snapshot, record.last_contact)

    def save_snapshot(self, message: SnapshotMessage, version: int, last_contact: float) -> None:
        """Replace the saved snapshot atomically.

        Raises:
            OSError: the file cannot be written; the previous file is left as it was.
        """
        record = _SnapshotFile(
            version=version,
            last_contact=last_contact,
            message=self.box.encrypt({"message": message.model_dump_json()}),
        )
        write_private_atomic(self.directory / SNAPSHOT_FILE, record.model_dump_json().encode())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a JSON object")
    return data


def write_private_atomic(path: Path, payload: bytes) -> None:
    """Replace ``path`` with ``payload`` atomically, readable by the owner only.

    A crash at any point leaves either the old file or the new one, never a mix.

    Raises:
        OSError: the directory or file cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
