"""The instance side of the sync link: enrollment and the long-lived snapshot stream.

The agent dials out to the control plane's ``GET /v1/sync`` WebSocket. For each
snapshot it verifies the Ed25519 signature against the key pinned at enrollment, and
checks that the snapshot is meant for this instance and is not older than the applied
one. It then builds the new runtime state (which validates it), saves it, swaps it in,
and replies ``{"version": N}``. Any failure replies ``{"version": N, "error": ...}`` and leaves the
applied version in place. A lost link is retried with exponential backoff and full
jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from smartflow.config.schema import ControlPlaneLinkSettings
from smartflow.core.errors import ConfigError
from smartflow.sync.protocol import (
    ErrorMessage,
    ProtocolError,
    Snapshot,
    SnapshotMessage,
    parse_server_message,
)
from smartflow.sync.runtime import RuntimeBuilder, RuntimeState, SnapshotInvalid
from smartflow.sync.signing import SignatureError, VerifyKey, verify_snapshot
from smartflow.sync.state import Enrollment, LinkFiles

__all__ = [
    "HEARTBEAT_S",
    "SYNC_PATH",
    "SyncAgent",
    "backoff_delay",
    "enroll",
    "link_ssl",
]

logger = logging.getLogger(__name__)

SYNC_PATH = "/v1/sync"
HEARTBEAT_S = 15.0
"""WebSocket ping interval; a link without a pong for half of it is dropped."""
_ENROLL_PATH = "/v1/enroll"
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_MAX_REPLY_ERROR_CHARS = 2000

SSLOption = ssl.SSLContext | aiohttp.Fingerprint | None


def link_ssl(link: ControlPlaneLinkSettings) -> SSLOption:
    """Return the TLS check of the link: a pinned certificate, a CA file, or the default.

    Raises:
        ConfigError: the CA file cannot be loaded.
    """
    if link.fingerprint:
        digest = link.fingerprint.lower().removeprefix("sha256:").replace(":", "")
        return aiohttp.Fingerprint(bytes.fromhex(digest))
    if link.ca_file:
        try:
            return ssl.create_default_context(cafile=link.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"control_plane.ca_file: cannot load {link.ca_file}: {exc}") from exc
    return None


def backoff_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """Return the wait before retry ``attempt`` (0-based): full jitter over a doubling cap."""
    cap = min(max_s, initial_s * 2.0 ** min(attempt, 30))
    return random.uniform(0, cap)


async def enroll(
    link: ControlPlaneLinkSettings,
    files: LinkFiles,
    *,
    name: str,
    site: str,
    token: str | None,
    ssl_option: SSLOption,
    timeout_s: float = 60.0,
) -> Enrollment:
    """Return the stored enrollment, or enroll with the one-time ``token`` and store it.

    An unreachable control plane is retried with backoff for ``timeout_s`` seconds.

    Raises:
        ConfigError: the stored enrollment is for another name or site, no token is
            given while not enrolled, or the control plane rejects the token.
    """
    existing = files.load_enrollment()
    if existing is not None:
        if (existing.instance, existing.site) != (name, site):
            raise ConfigError(
                f"this state directory is enrolled as instance {existing.instance!r} at site "
                f"{existing.site!r}, not {name!r} at {site!r}; use another state_dir, or "
                f"delete {files.directory} to enroll again"
            )
        if token:
            logger.info("instance %s is already enrolled; ignoring the enrollment token", name)
        return existing
    if not token:
        raise ConfigError(
            f"instance {name!r} is not enrolled yet: pass --enroll-token, or set "
            f"${link.enroll_token_env} to a one-time token from POST /v1/enrollment-tokens"
        )
    body = await _post_enroll(
        link, {"token": token, "name": name, "site": site}, ssl_option, timeout_s
    )
    try:
        verify_key = VerifyKey.from_base64(body["signing_key"]["public_key"])
        credential = str(body["credential"])
    except (KeyError, TypeError, SignatureError) as exc:
        raise ConfigError(f"the control plane's enrollment response is invalid: {exc}") from exc
    if verify_key.key_id != body["signing_key"].get("key_id"):
        raise ConfigError("the control plane's enrollment response names another key id")
    enrollment = Enrollment(link.url.rstrip("/"), name, site, credential, verify_key)
    files.save_enrollment(enrollment)
    logger.info(
        "enrolled as instance %s at site %s; trusting snapshot key %s",
        name,
        site,
        verify_key.key_id,
    )
    return enrollment


async def _post_enroll(
    link: ControlPlaneLinkSettings, body: dict[str, str], ssl_option: SSLOption, timeout_s: float
) -> dict[str, Any]:
    url = link.url.rstrip("/") + _ENROLL_PATH
    deadline = time.monotonic() + timeout_s
    attempt = 0
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        while True:
            try:
                async with session.post(url, json=body, ssl=_ssl_arg(ssl_option)) as response:
                    data = await response.json(content_type=None)
                    if response.status == 201 and isinstance(data, dict):
                        return data
                    raise ConfigError(
                        f"enrollment at {url} failed with HTTP {response.status}: "
                        f"{_error_message(data)}"
                    )
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ServerFingerprintMismatch):
                    raise ConfigError(f"TLS check of {url} failed: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise ConfigError(
                        f"cannot reach the control plane at {url} to enroll: {exc}"
                    ) from exc
                delay = backoff_delay(attempt, link.retry_initial_s, link.retry_max_s)
                attempt += 1
                logger.warning(
                    "enrollment at %s failed (%s); retry %d in %.1f s", url, exc, attempt, delay
                )
                await asyncio.sleep(delay)
            except ValueError as exc:
                raise ConfigError(f"the enrollment response of {url} is not JSON: {exc}") from exc


def _error_message(data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message", data["error"]))
    return str(data)[:500]


def _ssl_arg(option: SSLOption) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
    return True if option is None else option


class SyncAgent:
    """Keeps the sync stream open and applies what arrives on it.

    ``apply`` swaps a built state in. ``on_link`` is called with True when the stream
    opens and with False when it closes.
    """

    def __init__(
        self,
        *,
        link: ControlPlaneLinkSettings,
        enrollment: Enrollment,
        files: LinkFiles,
        builder: RuntimeBuilder,
        apply: Callable[[RuntimeState], None],
        on_link: Callable[[bool], None],
        applied: SnapshotMessage | None = None,
        ssl_option: SSLOption = None,
    ) -> None:
        self._link = link
        self._enrollment = enrollment
        self._files = files
        self._builder = builder
        self._apply = apply
        self._on_link = on_link
        self._ssl = ssl_option
        self._trusted = {enrollment.verify_key.key_id: enrollment.verify_key}
        self.applied_version = 0
        self._applied: SnapshotMessage | None = None
        self._handled = 0
        """Snapshot messages handled since start, applied or not."""
        if applied is not None:
            self.restore(applied)
        self.last_error: str | None = None
        """The newest rejection sent to the control plane, cleared by the next apply."""
        self.connected = False
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    @property
    def enrollment(self) -> Enrollment:
        """This instance's enrollment, whose credential also authenticates other calls
        of the instance to the control plane."""
        return self._enrollment

    def restore(self, message: SnapshotMessage) -> None:
        """Record ``message`` as applied: it was saved, and its state is being served."""
        self.applied_version = int(message.snapshot["version"])
        self._applied = message

    @property
    def sync_url(self) -> str:
        base = self._enrollment.control_plane
        return "ws" + base.removeprefix("http") + SYNC_PATH

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sync-agent")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def wait_for_version(self, version: int | None = None, timeout: float = 10.0) -> int:
        """Wait until ``version`` or a newer one is applied, and return the applied version.

        With ``version`` None, wait until the first snapshot from the control plane has
        been handled (applied, or rejected while a saved version is served).

        Raises:
            TimeoutError: not reached within ``timeout`` seconds.
        """

        def reached() -> bool:
            if version is None:
                return self._handled > 0 and self.applied_version > 0
            return self.applied_version >= version

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(reached)
        return self.applied_version

    # --- the link ----------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            while True:
                opened = await self._session(session)
                attempt = 0 if opened else attempt + 1
                delay = backoff_delay(attempt, self._link.retry_initial_s, self._link.retry_max_s)
                logger.info(
                    "reconnecting to %s in %.2f s (attempt %d)", self.sync_url, delay, attempt + 1
                )
                await asyncio.sleep(delay)

    async def _session(self, session: aiohttp.ClientSession) -> bool:
        """Run one stream until it closes; return whether it opened at all."""
        headers = {"Authorization": f"Bearer {self._enrollment.credential}"}
        try:
            stream = await session.ws_connect(
                self.sync_url,
                headers=headers,
                heartbeat=HEARTBEAT_S,
                max_msg_size=_MAX_MESSAGE_BYTES,
                ssl=_ssl_arg(self._ssl),
            )
        except aiohttp.WSServerHandshakeError as exc:
            hint = " (the instance credential was revoked?)" if exc.status == 401 else ""
            logger.warning(
                "sync stream to %s rejected with HTTP %s%s", self.sync_url, exc.status, hint
            )
            return False
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            logger.warning("cannot connect to %s: %s", self.sync_url, exc)
            return False
        logger.info("sync stream to %s open", self.sync_url)
        self.connected = True
        self._on_link(True)
        try:
            async for message in stream:
                if message.type == aiohttp.WSMsgType.TEXT:
                    reply = await self.handle(message.data)
                    if reply is not None:
                        await stream.send_json(reply)
                elif message.type == aiohttp.WSMsgType.ERROR:
                    logger.warning(
                        "sync stream to %s failed: %s", self.sync_url, stream.exception()
                    )
        except (aiohttp.ClientError, ConnectionResetError) as exc:
            logger.warning("sync stream to %s lost: %s", self.sync_url, exc)
        finally:
            await stream.close()
            self.connected = False
            self._on_link(False)
            await self._save_contact()
        logger.warning(
            "sync stream to %s closed (code %s); serving version %d",
            self.sync_url,
            stream.close_code,
            self.applied_version,
        )
        return True

    async def _save_contact(self) -> None:
        """Save the time the link closed, so staleness after a restart counts from it."""
        if self._applied is None:
            return
        try:
            await asyncio.to_thread(
                self._files.save_snapshot, self._applied, self.applied_version, time.time()
            )
        except OSError as exc:
            logger.error("cannot save the time of the last link to the control plane: %s", exc)

    # --- one message ---------------------------------------------------------------------

    async def handle(self, text: str) -> dict[str, Any] | None:
        """Apply one message from the control plane and return the reply to send, if any."""
        try:
            message = parse_server_message(text)
        except ProtocolError as exc:
            logger.warning("ignoring an invalid message from the control plane: %s", exc)
            return None
        if isinstance(message, ErrorMessage):
            logger.warning("the control plane reported: %s", message.message)
            return None
        version = message.snapshot.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            logger.warning("ignoring a snapshot message without a valid version")
            return None
        try:
            await self._apply_message(message, version)
            reply: dict[str, Any] = {"version": version}
        except (SignatureError, ProtocolError, SnapshotInvalid) as exc:
            reply = self._reject(version, str(exc))
        except Exception as exc:  # any failure must reject, never half-apply
            logger.exception("building snapshot version %d failed", version)
            reply = self._reject(version, f"internal error while applying: {exc!r}")
        async with self._changed:
            self._handled += 1
            self._changed.notify_all()
        return reply

    async def _apply_message(self, message: SnapshotMessage, version: int) -> None:
        snapshot = verify_snapshot(message, self._trusted)
        self._check_target(snapshot)
        if version == self.applied_version:
            # Ed25519 signatures are deterministic: equal data has an equal signature.
            if self._applied is None or message.signature != self._applied.signature:
                raise SnapshotInvalid(
                    f"snapshot version {version} is already applied with other content"
                )
            logger.info("snapshot version %d is already applied", version)
            return
        state = await asyncio.to_thread(self._builder.build, snapshot)
        try:
            await asyncio.to_thread(self._files.save_snapshot, message, version, time.time())
        except OSError as exc:
            # Serving the new version beats refusing it over a disk problem; a restart
            # then starts from the previous saved version.
            logger.error("cannot save snapshot version %d: %s", version, exc)
        self._apply(state)
        self._applied = message
        self.last_error = None
        async with self._changed:
            self.applied_version = version
        logger.info("applied snapshot version %d", version)

    def _check_target(self, snapshot: Snapshot) -> None:
        me = self._enrollment
        if snapshot.instance != me.instance or snapshot.site != me.site:
            raise SnapshotInvalid(
                f"snapshot is for instance {snapshot.instance!r} at site {snapshot.site!r}, "
                f"not {me.instance!r} at {me.site!r}"
            )
        if snapshot.version < self.applied_version:
            raise SnapshotInvalid(
                f"snapshot version {snapshot.version} is older than the applied version "
                f"{self.applied_version}"
            )

    def _reject(self, version: int, error: str) -> dict[str, Any]:
        error = error[:_MAX_REPLY_ERROR_CHARS]
        logger.warning(
            "rejected snapshot version %d, still serving version %d: %s",
            version,
            self.applied_version,
            error,
        )
        self.last_error = error
        return {"version": version, "error": error}
