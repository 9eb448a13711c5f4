"""Versioned policy store: each applied document set becomes a numbered version on disk."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from smartflow.core.errors import ConfigError, NotFound, SmartflowError
from smartflow.policy.documents import (
    PolicyDocument,
    PolicyIssue,
    PolicyValidationError,
    dump_documents,
    validate_documents,
)

__all__ = [
    "ActivePolicy",
    "CompilePolicies",
    "PolicyStore",
    "PolicyStoreConflict",
    "PolicyVersion",
    "VersionNotFound",
    "validate_only",
]

logger = logging.getLogger(__name__)

EvaluatorT = TypeVar("EvaluatorT")
CompilePolicies = Callable[[Sequence[PolicyDocument]], EvaluatorT]

_VERSION_FILE = re.compile(r"v(\d+)\.json")
_TEMP_PREFIX = ".tmp-"
_FORMAT = 1  # layout of one version file; bump it when the layout changes


class VersionNotFound(NotFound):
    """A policy version number that the store does not hold."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"policy version {version} not found; list versions with GET "
            "/admin/policies or `smartflow policy list`"
        )
        self.version = version


class PolicyStoreConflict(SmartflowError):
    """Another process wrote the next version first, so this one was not saved."""

    status = 409
    code = "conflict"


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """One applied document set: its number, time, author and a hash of its content.

    ``sha256`` is the hex SHA-256 of the documents as compact JSON with sorted keys, so two
    versions with equal documents have equal hashes. ``rollback_of`` is the version that a
    rollback copied.
    """

    version: int
    created_at: str
    author: str
    sha256: str
    documents: tuple[PolicyDocument, ...]
    rollback_of: int | None = None

    @property
    def names(self) -> list[str]:
        return [document.name for document in self.documents]

    def to_yaml(self) -> str:
        """Render the documents as multi-document YAML."""
        return dump_documents(self.documents)

    def summary(self) -> dict[str, Any]:
        """Return the version's details without its documents, as JSON-ready data."""
        return {
            "version": self.version,
            "created_at": self.created_at,
            "author": self.author,
            "sha256": self.sha256,
            "documents": self.names,
            "rollback_of": self.rollback_of,
        }


@dataclass(frozen=True, slots=True)
class ActivePolicy(Generic[EvaluatorT]):
    """The version in force and the evaluator that ``compile`` built from it."""

    version: PolicyVersion
    evaluator: EvaluatorT


def validate_only(documents: Sequence[PolicyDocument]) -> tuple[PolicyDocument, ...]:
    """Return the documents unchanged: a ``compile`` callback for a store without an engine."""
    return tuple(documents)


def _content_hash(data: Sequence[dict[str, Any]]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class PolicyStore(Generic[EvaluatorT]):
    """Policy versions kept under one directory, one JSON file per version.

    The newest version is the active one, because a rollback also creates a version. A
    document set becomes a version only after ``compile`` accepted it and its file was
    written, so a set that fails either step leaves the active version unchanged.

    Methods are thread-safe. Subscribers run in the thread that applied the version, while
    the store is locked, so they must be short and thread-safe (an attribute assignment is).

    NOTE: every version stays in memory and on disk; nothing prunes old versions.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        compile: CompilePolicies[EvaluatorT],
        *,
        clock: Callable[[], str] = _now,
    ) -> None:
        self.directory = Path(directory)
        self._compile = compile
        self._clock = clock
        self._lock = threading.RLock()
        self._versions: list[PolicyVersion] = []
        self._active: ActivePolicy[EvaluatorT] | None = None
        self._subscribers: list[Callable[[ActivePolicy[EvaluatorT]], None]] = []

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        compile: CompilePolicies[EvaluatorT],
    ) -> PolicyStore[EvaluatorT]:
        """Load the versions saved in ``directory`` (none if it does not exist yet).

        Raises:
            ConfigError: a version file cannot be read, is corrupt, or its documents no
                longer validate, or the newest version no longer compiles.
        """
        store = cls(directory, compile)
        store.load()
        return store

    # --- reading ---------------------------------------------------------------------

    @property
    def active(self) -> ActivePolicy[EvaluatorT] | None:
        """The version in force with its evaluator, or None before the first apply."""
        return self._active

    def list_versions(self) -> list[PolicyVersion]:
        """Return every version, oldest first."""
        with self._lock:
            return list(self._versions)

    def get(self, version: int) -> PolicyVersion:
        """Return one version.

        Raises:
            VersionNotFound: no such version.
        """
        with self._lock:
            for candidate in self._versions:
                if candidate.version == version:
                    return candidate
        raise VersionNotFound(version)

    def diff(self, from_version: int, to_version: int) -> str:
        """Return the unified diff of the YAML of two versions; empty when they are equal.

        Raises:
            VersionNotFound: either version does not exist.
        """
        old = self.get(from_version)
        new = self.get(to_version)
        lines = difflib.unified_diff(
            old.to_yaml().splitlines(keepends=True),
            new.to_yaml().splitlines(keepends=True),
            fromfile=f"version {old.version}",
            tofile=f"version {new.version}",
        )
        return "".join(lines)

    # --- changing --------------------------------------------------------------------

    def subscribe(
        self, callback: Callable[[ActivePolicy[EvaluatorT]], None], *, replay: bool = True
    ) -> None:
        """Call ``callback`` with every new active version.

        With ``replay``, it is also called at once with the current version, if there is one.
        """
        with self._lock:
            self._subscribers.append(callback)
            if replay and self._active is not None:
                self._notify_one(callback, self._active)

    def check(self, documents: Sequence[PolicyDocument]) -> EvaluatorT:
        """Compile ``documents`` without creating a version, and return the evaluator.

        Raises:
            PolicyValidationError: the set is empty or ``compile`` rejected it.
        """
        if not documents:
            raise PolicyValidationError(
                [
                    PolicyIssue(
                        document="(request)",
                        path="",
                        message="no policy documents found; send at least one document",
                    )
                ]
            )
        try:
            return self._compile(documents)
        except PolicyValidationError:
            raise
        except (ConfigError, ValueError) as exc:
            raise _compile_error(exc) from exc

    def apply(self, documents: Sequence[PolicyDocument], author: str) -> PolicyVersion:
        """Compile ``documents``, save them as the next version and make it active.

        Raises:
            PolicyValidationError: the set is empty or ``compile`` rejected it.
            PolicyStoreConflict: another process saved the same version number first.
            OSError: the version file could not be written.
        """
        return self._commit(tuple(documents), author, rollback_of=None)

    def rollback(self, to_version: int, author: str) -> PolicyVersion:
        """Create a new version with the documents of ``to_version`` and make it active.

        Raises:
            VersionNotFound: no such version.
            PolicyValidationError: the old documents no longer compile.
        """
        old = self.get(to_version)
        return self._commit(old.documents, author, rollback_of=old.version)

    def _commit(
        self, documents: tuple[PolicyDocument, ...], author: str, rollback_of: int | None
    ) -> PolicyVersion:
        with self._lock:
            evaluator = self.check(documents)
            data = [document.to_dict() for document in documents]
            number = self._versions[-1].version + 1 if self._versions else 1
            version = PolicyVersion(
                version=number,
                created_at=self._clock(),
                author=author,
                sha256=_content_hash(data),
                documents=documents,
                rollback_of=rollback_of,
            )
            self._write(version, data)
            self._versions.append(version)
            active = ActivePolicy(version, evaluator)
            self._active = active
            logger.info(
                "policy version %d active: documents %s, sha256 %s, by %s%s",
                number,
                ", ".join(version.names),
                version.sha256[:12],
                author,
                f", rollback to version {rollback_of}" if rollback_of is not None else "",
            )
            # Still under the lock, so subscribers see versions in order even when two
            # applies run in different threads.
            for callback in list(self._subscribers):
                self._notify_one(callback, active)
        return version

    def _notify_one(
        self, callback: Callable[[ActivePolicy[EvaluatorT]], None], active: ActivePolicy[Any]
    ) -> None:
        try:
            callback(active)
        except Exception:
            # The version is saved and active in the store, so one failing subscriber must
            # not hide it from the others.
            logger.exception(
                "policy subscriber %r failed on version %d", callback, active.version.version
            )

    # --- files -----------------------------------------------------------------------

    def _path(self, version: int) -> Path:
        return self.directory / f"v{version:06d}.json"

    def _write(self, version: PolicyVersion, data: list[dict[str, Any]]) -> None:
        record = {
            "format": _FORMAT,
            "version": version.version,
            "created_at": version.created_at,
            "author": version.author,
            "sha256": version.sha256,
            "rollback_of": version.rollback_of,
            "documents": data,
        }
        payload = json.dumps(record, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_new_file(self._path(version.version), payload)

    def load(self) -> None:
        """Read every version file and compile the newest; replaces what the store held.

        Raises:
            ConfigError: as ``open``.
        """
        versions = [self._read(path) for path in self._version_files()]
        versions.sort(key=lambda item: item.version)
        active: ActivePolicy[EvaluatorT] | None = None
        if versions:
            newest = versions[-1]
            try:
                active = ActivePolicy(newest, self.check(newest.documents))
            except PolicyValidationError as exc:
                raise ConfigError(
                    f"stored policy version {newest.version} no longer compiles: {exc}. Move "
                    f"{self._path(newest.version)} out of {self.directory} to start from the "
                    "version before it"
                ) from exc
        with self._lock:
            self._versions = versions
            self._active = active
        if active is not None:
            logger.info(
                "loaded %d policy versions from %s; version %d is active",
                len(versions),
                self.directory,
                active.version.version,
            )

    def _version_files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        files: list[Path] = []
        for path in self.directory.iterdir():
            if path.name.startswith(_TEMP_PREFIX):
                # Left by a process that stopped between writing and linking; never a version.
                logger.warning("removing unfinished policy file %s", path)
                path.unlink(missing_ok=True)
            elif _VERSION_FILE.fullmatch(path.name):
                files.append(path)
        return files

    def _read(self, path: Path) -> PolicyVersion:
        try:
            record = json.loads(path.read_bytes())
            layout = int(record.get("format", 1))
            number = int(record["version"])
            data = record["documents"]
            stored_hash = str(record["sha256"])
            created_at = str(record["created_at"])
            author = str(record["author"])
            rollback_of = record.get("rollback_of")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read policy version file {path}: {exc}") from exc
        if layout > _FORMAT:
            raise ConfigError(
                f"policy version file {path} has format {layout}, written by a newer smartflow; "
                f"this one reads format {_FORMAT} and older"
            )
        match = _VERSION_FILE.fullmatch(path.name)
        if match is None or int(match.group(1)) != number:
            raise ConfigError(
                f"policy version file {path} contains version {number}, not the one in its name"
            )
        if not isinstance(data, list) or _content_hash(data) != stored_hash:
            raise ConfigError(
                f"policy version file {path} is corrupt: its documents do not match its sha256"
            )
        try:
            documents = tuple(validate_documents(data))
        except PolicyValidationError as exc:
            raise ConfigError(f"policy version file {path} is no longer valid: {exc}") from exc
        return PolicyVersion(
            number,
            created_at,
            author,
            stored_hash,
            documents,
            int(rollback_of) if rollback_of is not None else None,
        )


def _compile_error(exc: ConfigError | ValueError) -> PolicyValidationError:
    """Wrap an error of the compile callback that does not name a document."""
    message = exc.message if isinstance(exc, ConfigError) else str(exc)
    path = exc.param if isinstance(exc, ConfigError) and exc.param else ""
    issue = PolicyIssue(document="(policy set)", path=path, message=message)
    return PolicyValidationError([issue])


def _write_new_file(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically, failing if ``path`` already exists.

    The bytes go to a temporary file in the same directory, which is flushed to disk and
    then hard-linked to ``path`` (renamed where hard links are not supported). The link fails
    if ``path`` exists, so a version written by another process is never replaced. A reader
    sees the whole file or none of it.

    Raises:
        PolicyStoreConflict: ``path`` already exists.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        _link_new(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    _fsync_directory(path.parent)


def _link_new(temporary: str, path: Path) -> None:
    conflict = PolicyStoreConflict(
        f"{path.name} already exists: another process saved this policy version. "
        "Restart this gateway to load it, then apply again"
    )
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise conflict from None
    except OSError as exc:
        # Some network file systems have no hard links. A rename after the existence check
        # protects against this process only, because another one could write in between.
        logger.debug("hard link in %s failed (%s); renaming instead", path.parent, exc)
        if path.exists():
            raise conflict from None
        os.rename(temporary, path)


def _fsync_directory(directory: Path) -> None:
    """Flush the directory entry of a new file, so it survives a power loss."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
