"""``GET /v1/sync``: the WebSocket stream that pushes signed snapshots to one instance.

On connect the stream sends the newest version. It sends each later version as soon as
this process makes it. A version made by another process sharing the database is found
by one poller per process, within ``sync_poll_interval_s``. The instance's replies are
recorded as its sync state, in batched writes shared by all streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import WSMsgType, web

from smartflow.control.api.routing import Call
from smartflow.control.services.plane import ControlPlane
from smartflow.control.store.tables import InstanceRow
from smartflow.core.errors import AuthenticationError
from smartflow.sync.protocol import ErrorMessage, ProtocolError, parse_reply

__all__ = ["CLOSE_REPLACED", "CLOSE_REVOKED", "STREAMS_KEY", "StreamRegistry", "sync_stream"]

logger = logging.getLogger(__name__)

CLOSE_REPLACED = 4000
"""Close code when the same instance opened a newer stream."""
CLOSE_REVOKED = 4001
"""Close code when the instance was deleted."""
SEEN_INTERVAL_S = 30.0
"""How often an open, idle stream refreshes the instance's ``last_seen``."""


class StreamRegistry:
    """The open sync stream of each instance in this process (at most one per instance)."""

    def __init__(self) -> None:
        self._streams: dict[str, web.WebSocketResponse] = {}

    def is_connected(self, name: str) -> bool:
        return name in self._streams

    @property
    def connected_count(self) -> int:
        return len(self._streams)

    async def register(self, name: str, stream: web.WebSocketResponse) -> None:
        previous = self._streams.get(name)
        self._streams[name] = stream
        if previous is not None:
            logger.info("instance %s opened a new sync stream; closing the previous one", name)
            await previous.close(code=CLOSE_REPLACED, message=b"replaced by a newer stream")

    def unregister(self, name: str, stream: web.WebSocketResponse) -> bool:
        """Forget ``stream``; return False if a newer stream of the instance replaced it."""
        if self._streams.get(name) is not stream:
            return False
        del self._streams[name]
        return True

    async def close(self, name: str, code: int, message: str) -> None:
        stream = self._streams.pop(name, None)
        if stream is not None:
            await stream.close(code=code, message=message.encode())

    async def close_all(self) -> None:
        """Close every stream; their handlers then record the instances as disconnected."""
        for stream in list(self._streams.values()):
            await stream.close(code=1001, message=b"control plane shutting down")


STREAMS_KEY: web.AppKey[StreamRegistry] = web.AppKey("sync_streams", StreamRegistry)


async def sync_stream(call: Call) -> web.StreamResponse:
    request = call.request
    plane = call.plane
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise AuthenticationError(
            "missing instance credential: send 'Authorization: Bearer <credential>'"
        )
    instance = await plane.access.authenticate_instance(credential.strip())
    stream = web.WebSocketResponse(
        heartbeat=plane.settings.heartbeat_s, max_msg_size=plane.settings.max_message_bytes
    )
    if not stream.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="GET /v1/sync needs a WebSocket upgrade request")
    await stream.prepare(request)
    registry = request.app[STREAMS_KEY]
    await registry.register(instance.name, stream)
    logger.info("instance %s (site %s) connected for sync", instance.name, instance.site)
    session = _SyncSession(plane, instance, stream)
    try:
        await session.run()
    finally:
        if registry.unregister(instance.name, stream):
            plane.instances.record_disconnected(instance.id)
        logger.info("sync stream of instance %s closed", instance.name)
    return stream


class _SyncSession:
    def __init__(
        self, plane: ControlPlane, instance: InstanceRow, stream: web.WebSocketResponse
    ) -> None:
        self._plane = plane
        self._instance = instance
        self._stream = stream
        self._sent: set[int] = set()
        self._last_sent = 0

    async def run(self) -> None:
        pusher = asyncio.create_task(self._push(), name=f"sync-push-{self._instance.name}")
        try:
            await self._receive()
        finally:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pusher

    async def _push(self) -> None:
        plane = self._plane
        try:
            async with plane.instances.watching_head():
                await self._send(await plane.instances.head())
                touched = time.monotonic()
                while not self._stream.closed:
                    # The notifier announces this process's versions at once and, through
                    # the shared head poller, other processes' versions within a poll interval.
                    head = await plane.notifier.wait_newer(self._last_sent, SEEN_INTERVAL_S)
                    if head > self._last_sent:
                        await self._send(head)
                        touched = time.monotonic()
                    elif time.monotonic() - touched >= SEEN_INTERVAL_S:
                        plane.instances.record_seen(self._instance.id)
                        touched = time.monotonic()
        except ConnectionResetError:
            logger.info("sync stream of instance %s closed while sending", self._instance.name)
        except Exception:
            logger.exception("sync stream of instance %s failed", self._instance.name)
            await self._stream.close(code=1011, message=b"internal error")

    async def _send(self, version: int) -> None:
        message = await self._plane.instances.snapshot_message(self._instance, version)
        # Queued before sending, so a fast reply cannot be overwritten by "syncing".
        self._plane.instances.record_sent(self._instance.id, version)
        self._sent.add(version)
        self._last_sent = version
        await self._stream.send_str(message)

    async def _receive(self) -> None:
        async for message in self._stream:
            if message.type == WSMsgType.TEXT:
                await self._reply(message.data)
            elif message.type == WSMsgType.BINARY:
                await self._error("send replies as text messages")
            elif message.type == WSMsgType.ERROR:
                logger.info(
                    "sync stream of instance %s failed: %s",
                    self._instance.name,
                    self._stream.exception(),
                )

    async def _reply(self, text: str) -> None:
        try:
            reply = parse_reply(text)
        except ProtocolError as exc:
            await self._error(str(exc))
            return
        if reply.version not in self._sent:
            await self._error(f"version {reply.version} was not sent on this stream")
            return
        self._plane.instances.record_reply(self._instance, reply)

    async def _error(self, text: str) -> None:
        logger.info("sync message from instance %s rejected: %s", self._instance.name, text)
        await self._stream.send_str(ErrorMessage(message=text).model_dump_json())
