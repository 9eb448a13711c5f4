"""The control plane's services, opened together over one database and state directory."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from smartflow.control.services.access import AccessService
from smartflow.control.services.analytics import AnalyticsService
from smartflow.control.services.context import SYSTEM
from smartflow.control.services.history import HistoryService
from smartflow.control.services.ingest import IngestService
from smartflow.control.services.instances import InstanceService
from smartflow.control.services.notifier import VersionNotifier
from smartflow.control.services.objects import ObjectService
from smartflow.control.services.policies import PolicyService
from smartflow.control.services.prices import PriceService
from smartflow.control.services.snapshots import head_version
from smartflow.control.services.transactions import Store
from smartflow.control.settings import ControlPlaneSettings
from smartflow.control.store.crypto import SecretBox, load_secret_box
from smartflow.control.store.database import Database, normalise_url, open_database
from smartflow.sync.signing import SigningKey, load_or_create_signing_key

__all__ = ["ControlPlane"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ControlPlane:
    settings: ControlPlaneSettings
    database: Database
    store: Store
    box: SecretBox
    signing_key: SigningKey
    notifier: VersionNotifier
    objects: ObjectService
    policies: PolicyService
    access: AccessService
    instances: InstanceService
    history: HistoryService
    ingest: IngestService
    analytics: AnalyticsService
    prices: PriceService
    initial_admin_token: str | None = None
    """The admin token this start made because the store had none, to show once."""

    @classmethod
    async def open(
        cls, settings: ControlPlaneSettings, is_connected: Callable[[str], bool]
    ) -> ControlPlane:
        """Prepare the state directory, keys and database, and make the first snapshot
        version and admin token if the store has none.

        Raises:
            ConfigError: a key, the state directory or the database is unusable.
        """
        normalise_url(settings.resolved_database_url)  # reject a bad URL before making keys
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        box = load_secret_box(settings.secret_key_env, settings.resolved_secret_key_file)
        signing_key = load_or_create_signing_key(settings.state_dir)
        database = await open_database(settings.resolved_database_url)
        notifier = VersionNotifier()
        store = Store(database, notifier, settings.snapshot_retention)
        plane = cls(
            settings=settings,
            database=database,
            store=store,
            box=box,
            signing_key=signing_key,
            notifier=notifier,
            objects=ObjectService(store, box),
            policies=PolicyService(store),
            access=AccessService(store, settings.enrollment_token_max_ttl_s),
            instances=InstanceService(
                store, box, signing_key, is_connected, settings.sync_poll_interval_s
            ),
            history=HistoryService(store),
            ingest=IngestService(database),
            analytics=AnalyticsService(store),
            prices=PriceService(store),
        )
        try:
            created = await plane._initialise()
        except BaseException:
            await database.close()
            raise
        return dataclasses.replace(plane, initial_admin_token=created) if created else plane

    async def _initialise(self) -> str | None:
        """Make the first snapshot version and admin token if needed; return a new token."""
        async with self.store.write(SYSTEM) as tx:
            if await head_version(tx.session) == 0:
                tx.changed("initial empty configuration")
        async with self.store.read() as session:
            self.notifier.publish(await head_version(session))
        configured = self.settings.bootstrap_admin_token
        token = configured.get_secret_value() if configured else None
        token = token or os.environ.get(self.settings.admin_token_env, "").strip() or None
        return await self.access.bootstrap(token)

    async def close(self) -> None:
        await self.instances.close()
        await self.database.close()
