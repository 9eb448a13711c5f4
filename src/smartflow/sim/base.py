"""Shared machinery of the provider simulators: serving, faults and request records.

Every simulator is an aiohttp application on 127.0.0.1 with the provider's own routes
plus a control API under ``/__sim/`` that tests and the benchmark use:

- ``POST /__sim/faults`` with a ``Fault`` as JSON queues a fault; ``DELETE`` clears them.
- ``GET /__sim/requests`` lists the recorded requests (newest last); ``DELETE`` clears.
- ``GET /__sim/cancelled`` lists requests whose client went away before the end, with
  the time in seconds since the epoch at which the simulator noticed.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any

import orjson
from aiohttp import web

__all__ = ["Fault", "RecordedRequest", "Simulator"]

logger = logging.getLogger(__name__)

_SECRET_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


@dataclass(slots=True)
class Fault:
    """A failure to inject into the next ``times`` matching requests.

    ``status`` answers with that error status in the provider's error format.
    ``latency`` waits that many seconds before the response starts. ``chunk_delay``
    waits between stream events. ``disconnect_after`` closes the connection after
    that many stream events. ``error_after`` sends the provider's in-stream error
    event after that many stream events. ``model`` and ``path`` restrict the match.
    """

    status: int | None = None
    message: str | None = None
    retry_after: float | None = None
    latency: float = 0.0
    chunk_delay: float | None = None
    disconnect_after: int | None = None
    error_after: int | None = None
    times: int = 1
    model: str | None = None
    path: str | None = None

    def matches(self, model: str | None, path: str) -> bool:
        if self.model is not None and self.model != model:
            return False
        return self.path is None or self.path in path


@dataclass(slots=True)
class RecordedRequest:
    """One request as the simulator received it.

    Credential headers are replaced by the SHA-256 of their value, so tests can check
    which key arrived without the simulator keeping it.
    """

    id: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    received_at: float


class Simulator:
    """Base class: subclasses add the provider routes in ``add_routes``."""

    name = "simulator"

    def __init__(self, *, chunk_delay: float = 0.0, record_limit: int = 1000) -> None:
        self.chunk_delay = chunk_delay
        self.faults: list[Fault] = []
        self.requests: deque[RecordedRequest] = deque(maxlen=record_limit)
        self.cancelled: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- to override ---------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def error_response(
        self, status: int, message: str, *, retry_after: float | None = None
    ) -> web.Response:
        """Render an error in the provider's own format."""
        raise NotImplementedError

    # --- helpers for subclasses ----------------------------------------------------

    def next_id(self) -> str:
        return f"{next(self._ids):08d}"

    def take_fault(self, model: str | None, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(model, path):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def record(self, request: web.Request, body: Any) -> RecordedRequest:
        headers = {}
        for key, value in request.headers.items():
            lower = key.lower()
            if lower in _SECRET_HEADERS:
                value = "sha256:" + hashlib.sha256(value.encode()).hexdigest()
            headers[lower] = value
        entry = RecordedRequest(
            id=self.next_id(),
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=headers,
            body=body,
            received_at=time.time(),
        )
        self.requests.append(entry)
        return entry

    def mark_cancelled(self, entry: RecordedRequest, reason: str) -> None:
        self.cancelled.append(
            {"request_id": entry.id, "path": entry.path, "at": time.time(), "reason": reason}
        )
        logger.info("%s: client went away during request %s (%s)", self.name, entry.id, reason)

    async def apply_fault_before_response(self, fault: Fault | None) -> web.Response | None:
        """Sleep for the fault's latency and return its error response, if any."""
        if fault is None:
            return None
        if fault.latency:
            await asyncio.sleep(fault.latency)
        if fault.status is not None:
            message = fault.message or f"Simulated failure with status {fault.status}."
            return self.error_response(fault.status, message, retry_after=fault.retry_after)
        return None

    async def write_events(
        self,
        request: web.Request,
        response: web.StreamResponse,
        entry: RecordedRequest,
        events: list[bytes],
        fault: Fault | None,
        error_event: bytes | None = None,
    ) -> None:
        """Write encoded stream events with the configured pacing and faults.

        A client that disconnects is recorded in ``cancelled`` and ends the handler.
        """
        delay = fault.chunk_delay if fault and fault.chunk_delay is not None else self.chunk_delay
        try:
            for number, event in enumerate(events):
                if (
                    fault
                    and fault.disconnect_after is not None
                    and number >= fault.disconnect_after
                ):
                    assert request.transport is not None
                    request.transport.close()
                    return
                if fault and fault.error_after is not None and number >= fault.error_after:
                    if error_event is not None:
                        await response.write(error_event)
                    return
                await response.write(event)
                if delay:
                    await asyncio.sleep(delay)
            await response.write_eof()
        except asyncio.CancelledError:
            self.mark_cancelled(entry, "cancelled")
            raise
        except (ConnectionResetError, ConnectionError) as exc:
            self.mark_cancelled(entry, type(exc).__name__)

    # --- serving -------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/__sim/faults", self._add_fault)
        app.router.add_delete("/__sim/faults", self._clear_faults)
        app.router.add_get("/__sim/requests", self._list_requests)
        app.router.add_delete("/__sim/requests", self._clear_requests)
        app.router.add_get("/__sim/cancelled", self._list_cancelled)
        self.add_routes(app)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving and return the base URL, such as ``http://127.0.0.1:40123``."""
        self._runner = web.AppRunner(self.make_app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        bound = server.sockets[0].getsockname()  # type: ignore[attr-defined]
        self.base_url = f"http://{host}:{bound[1]}"
        logger.info("%s simulator listening on %s", self.name, self.base_url)
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            logger.info("%s simulator stopped", self.name)

    # --- control API ---------------------------------------------------------------

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            data = orjson.loads(await request.read())
            names = {f.name for f in fields(Fault)}
            unknown = set(data) - names
            if unknown:
                raise ValueError(f"unknown fault fields: {sorted(unknown)}")
            fault = Fault(**data)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": f"invalid fault: {exc}"}, status=400)
        self.faults.append(fault)
        return web.json_response(asdict(fault))

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"cleared": True})

    async def _list_requests(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps([asdict(r) for r in self.requests]), content_type="application/json"
        )

    async def _clear_requests(self, request: web.Request) -> web.Response:
        self.requests.clear()
        self.cancelled.clear()
        return web.json_response({"cleared": True})

    async def _list_cancelled(self, request: web.Request) -> web.Response:
        return web.json_response(self.cancelled)
