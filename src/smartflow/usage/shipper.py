"""Ship queued usage events to the control plane's ingest endpoint, at least once.

Each batch is one ``POST`` to the configured URL (the control plane serves it at
``/v1/events``) with the instance credential in ``Authorization: Bearer`` and the
instance name in ``x-smartflow-instance``. The body is a JSON object::

    {"schema_version": 1, "instance": "...", "site": "...", "batch_id": "<UUIDv7>",
     "sent_at": "<RFC 3339>", "events": [<UsageEvent JSON>, ...]}

The receiver must store each event once by its ``event_id``, because the same event can
arrive again. The shipper deletes a batch from the local queue only after a 2xx response,
so a batch whose response was lost is sent again. Responses:

- 2xx: the batch is stored; its events are deleted from the queue.
- 400, 413, 422: the batch was rejected for its content. The shipper splits it in halves
  to isolate the bad events, and moves an event rejected on its own to the queue's
  dead letters (``dead.log`` in the queue directory).
- anything else (401, 403, 404, 408, 429, 5xx), a timeout or a connection error: the
  batch stays queued and is retried after an exponential backoff with full jitter, or
  after ``Retry-After`` seconds when the response has that header.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import orjson

from smartflow.config.schema import UsageShippingSettings
from smartflow.core.errors import ConfigError
from smartflow.providers.base import Secret
from smartflow.usage.events import SCHEMA_VERSION, new_event_id, utc_timestamp
from smartflow.usage.queue import QueuedEvent, UsageQueue

__all__ = [
    "INGEST_PATH",
    "INSTANCE_HEADER",
    "ShipmentFailed",
    "ShipperSettings",
    "ShipperStats",
    "UsageShipper",
    "shipper_from_config",
]

logger = logging.getLogger(__name__)

INGEST_PATH = "/v1/events"
INSTANCE_HEADER = "x-smartflow-instance"
_REJECTED = frozenset({400, 413, 422})
_MAX_ERROR_TEXT = 300


@dataclass(frozen=True, slots=True)
class ShipperSettings:
    url: str
    """The full ingest URL, such as ``https://control.example/v1/events``."""
    credential: Secret
    instance: str
    site: str
    batch_events: int = 500
    max_batch_bytes: int = 4 * 1024 * 1024
    """Upper bound of a request body; a single larger event is still sent alone."""
    idle_wait_s: float = 1.0
    """How long to wait for new events before checking the queue again."""
    fill_wait_s: float = 0.0
    """How long to wait after a partial batch before reading the next one."""
    timeout_s: float = 30.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0


@dataclass(slots=True)
class ShipperStats:
    shipped: int = 0
    """Events acknowledged after a 2xx."""
    batches: int = 0
    failures: int = 0
    """Requests that failed and will be retried."""
    dead_lettered: int = 0
    consecutive_failures: int = 0
    last_success_unix: float | None = None
    last_error: str | None = None


class ShipmentFailed(Exception):
    """A batch that was not stored and stays queued, to retry after ``delay`` seconds
    (after the backoff when ``None``)."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class UsageShipper:
    """Moves events from a ``UsageQueue`` to the ingest endpoint; see the module docstring."""

    def __init__(
        self,
        queue: UsageQueue,
        settings: ShipperSettings,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.stats = ShipperStats()
        self._session = session
        self._own_session = session is None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Whether the last batch was full, so that the next one need not wait to fill.
        self._full = False

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Start shipping in a background task, which ``stop`` ends."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="usage-shipper")
        return self._task

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop shipping. A request still under way after ``grace_s`` seconds is cancelled;
        its batch stays queued and is sent again after the next start."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=grace_s)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run(self) -> None:
        """Ship batches until ``stop`` is called."""
        logger.info("usage shipper started: sending to %s", self.settings.url)
        try:
            while not self._stopping.is_set():
                await self._step()
        finally:
            if self._own_session and self._session is not None:
                await self._session.close()
                self._session = None
            logger.info("usage shipper stopped: %d events shipped", self.stats.shipped)

    async def _step(self) -> None:
        """Ship one batch, or wait for events or for the backoff after a failure."""
        try:
            sent = await self.ship_once()
        except ShipmentFailed as failure:
            self._record_failure(failure.reason)
            await self._sleep(self._delay(failure.delay))
            return
        except Exception as exc:
            # A queue or programming error must not end shipping for good.
            logger.exception("usage shipper: unexpected error; retrying after the backoff")
            self._record_failure(f"{type(exc).__name__}: {exc}")
            await self._sleep(self._delay(None))
            return
        if sent == 0:
            await self._wait_for_events()
        elif not self._full and self.settings.fill_wait_s:
            await self._sleep(self.settings.fill_wait_s)

    # --- one batch ----------------------------------------------------------------------

    async def ship_once(self) -> int:
        """Send the oldest batch; returns the events acknowledged or dead-lettered.

        Raises:
            ShipmentFailed: the batch stays queued, to be sent again later.
        """
        run = self.queue.read_run(self.settings.batch_events)
        if run is not None:
            count = self._batch_size(run.bodies)
            return await self._deliver_run(run.first_seq, run.bodies[:count])
        batch = await self.queue.read_batch(self.settings.batch_events)
        if not batch:
            return 0
        bodies = [e.body for e in batch]
        count = self._batch_size(bodies)
        return await self._deliver(batch[:count], bodies[:count])

    def _batch_size(self, bodies: Sequence[bytes]) -> int:
        """Return how many of ``bodies`` the next request takes, and note whether that
        fills it. A batch cut by the byte bound is as full as it can be."""
        count = self._fitting(bodies)
        self._full = count < len(bodies) or count >= self.settings.batch_events
        return count

    async def _deliver(self, batch: Sequence[QueuedEvent], bodies: Sequence[bytes]) -> int:
        """Send ``batch``, whose JSON bodies are ``bodies``."""
        status, text, retry_after = await self._post(bodies)
        if 200 <= status < 300:
            await self.queue.ack(e.seq for e in batch)
            self._record_success(len(batch))
            return len(batch)
        return await self._not_stored(batch, status, text, retry_after)

    async def _deliver_run(self, first_seq: int, bodies: list[bytes]) -> int:
        """Send events the queue still keeps in memory, without an object per event
        unless the batch is rejected."""
        status, text, retry_after = await self._post(bodies)
        if 200 <= status < 300:
            await self.queue.ack_run(first_seq, len(bodies))
            self._record_success(len(bodies))
            return len(bodies)
        batch = [QueuedEvent(first_seq + i, body) for i, body in enumerate(bodies)]
        return await self._not_stored(batch, status, text, retry_after)

    async def _not_stored(
        self, batch: Sequence[QueuedEvent], status: int, text: str, retry_after: float | None
    ) -> int:
        if status in _REJECTED:
            return await self._split(batch, status, text)
        raise ShipmentFailed(f"HTTP {status}: {text}", retry_after)

    async def _split(self, batch: Sequence[QueuedEvent], status: int, text: str) -> int:
        """Send the halves of a rejected batch on their own, down to single events."""
        if len(batch) == 1:
            event = batch[0]
            reason = f"HTTP {status}: {text}"
            if not await self.queue.dead_letter([event.seq], reason):
                logger.warning(
                    "usage shipper: the control plane rejected event %s (%s), which was "
                    "dropped from the queue meanwhile",
                    event.event_id,
                    reason,
                )
                return 1
            self.stats.dead_lettered += 1
            logger.error(
                "usage shipper: the control plane rejected event %s (%s); moved it to dead.log",
                event.event_id,
                reason,
            )
            return 1
        middle = len(batch) // 2
        halves = (batch[:middle], batch[middle:])
        sent = 0
        for half in halves:
            sent += await self._deliver(half, [e.body for e in half])
        return sent

    async def _post(self, bodies: Sequence[bytes]) -> tuple[int, str, float | None]:
        """Send one batch; returns the status, the start of the body and ``Retry-After``."""
        session = self._client()
        headers = {
            "Authorization": "Bearer " + self.settings.credential.reveal(),
            "Content-Type": "application/json",
            INSTANCE_HEADER: self.settings.instance,
        }
        try:
            async with session.post(
                self.settings.url, data=self._payload(bodies), headers=headers
            ) as response:
                text = (await response.text(errors="replace"))[:_MAX_ERROR_TEXT]
                retry_after = _seconds(response.headers.get("Retry-After"))
                return response.status, text, retry_after
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ShipmentFailed(f"{type(exc).__name__}: {exc}") from exc

    def _payload(self, bodies: Sequence[bytes]) -> bytes:
        # Stored bodies are JSON objects already, so they are joined without re-parsing.
        head = orjson.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "instance": self.settings.instance,
                "site": self.settings.site,
                "batch_id": new_event_id(),
                "sent_at": utc_timestamp(time.time()),
            }
        )
        return head[:-1] + b',"events":[' + b",".join(bodies) + b"]}"

    def _fitting(self, bodies: Sequence[bytes]) -> int:
        """Return how many of ``bodies`` fit in ``max_batch_bytes`` with their commas; at
        least one, so an event larger than the bound is still sent alone."""
        limit = self.settings.max_batch_bytes
        if sum(map(len, bodies)) + len(bodies) <= limit:
            return len(bodies)
        for index, total in enumerate(itertools.accumulate(len(body) + 1 for body in bodies)):
            if total > limit:
                return max(index, 1)
        return len(bodies)

    # --- helpers ------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    def _record_success(self, count: int) -> None:
        if self.stats.consecutive_failures:
            logger.info(
                "usage shipper: delivering again after %d failed tries",
                self.stats.consecutive_failures,
            )
        self.stats.shipped += count
        self.stats.batches += 1
        self.stats.consecutive_failures = 0
        self.stats.last_success_unix = time.time()

    def _record_failure(self, reason: str) -> None:
        self.stats.failures += 1
        self.stats.consecutive_failures += 1
        self.stats.last_error = reason
        # Log the first failure and then every tenth, so an outage does not flood the log.
        if self.stats.consecutive_failures % 10 == 1:
            logger.warning(
                "usage shipper: sending to %s failed (%s); %d tries so far, %d events queued",
                self.settings.url,
                reason,
                self.stats.consecutive_failures,
                self.queue.stats().depth,
            )

    def _delay(self, retry_after: float | None) -> float:
        exponent = min(self.stats.consecutive_failures - 1, 30)
        ceiling = min(self.settings.backoff_initial_s * 2.0**exponent, self.settings.backoff_max_s)
        backoff = random.uniform(0, ceiling)
        if retry_after is not None:
            return min(max(retry_after, backoff), self.settings.backoff_max_s)
        return backoff

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _wait_for_events(self) -> None:
        waiter = asyncio.create_task(self.queue.wait_for_events(self.settings.idle_wait_s))
        stopper = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, stopper):
                task.cancel()
            await asyncio.gather(waiter, stopper, return_exceptions=True)


def _seconds(header: str | None) -> float | None:
    """Parse a ``Retry-After`` in seconds; HTTP dates fall back to the backoff."""
    if header is None:
        return None
    try:
        value = float(header)
    except ValueError:
        return None
    return value if value >= 0 else None


def shipper_from_config(
    queue: UsageQueue,
    settings: UsageShippingSettings,
    *,
    instance: str,
    site: str,
    environ: Mapping[str, str],
) -> UsageShipper:
    """Build a shipper from the ``usage.shipping`` configuration.

    Raises:
        ConfigError: the credential variable is not set.
    """
    credential = environ.get(settings.credential_env, "").strip()
    if not credential:
        raise ConfigError(
            f"usage.shipping: the environment variable {settings.credential_env} is not set; "
            "set it to the instance credential that enrollment returned"
        )
    return UsageShipper(
        queue,
        ShipperSettings(
            url=settings.url,
            credential=Secret(credential),
            instance=instance,
            site=site,
            batch_events=settings.batch_events,
            idle_wait_s=settings.idle_wait_s,
            fill_wait_s=settings.fill_wait_s,
            backoff_max_s=settings.backoff_max_s,
        ),
    )
