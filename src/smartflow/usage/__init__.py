"""Usage accounting of an instance: events, prices, the durable queue and the shipper."""

from __future__ import annotations

from smartflow.usage.builder import UsageBuilder
from smartflow.usage.events import SCHEMA_VERSION, UsageEvent, new_event_id
from smartflow.usage.prices import PriceCatalog
from smartflow.usage.queue import QueueSettings, UsageQueue
from smartflow.usage.shipper import ShipperSettings, UsageShipper

__all__ = [
    "SCHEMA_VERSION",
    "PriceCatalog",
    "QueueSettings",
    "ShipperSettings",
    "UsageBuilder",
    "UsageEvent",
    "UsageQueue",
    "UsageShipper",
    "new_event_id",
]
