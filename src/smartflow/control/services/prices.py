"""The central price catalogue: an overlay on the packaged ``prices.yaml``, sent to every
instance in its snapshot, so instances price usage with the same rates."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from smartflow.control.services.context import Actor
from smartflow.control.services.errors import ObjectInvalid
from smartflow.control.services.transactions import Store
from smartflow.control.store.tables import PriceCatalogRow, utc_now
from smartflow.core.errors import ConfigError
from smartflow.usage.prices import PriceCatalog

__all__ = ["PriceCatalogIn", "PriceCatalogOut", "PriceService"]


class PriceCatalogIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    providers: dict[str, Any] = Field(
        description="Provider type to {source?, models: {MODEL: entry}}, as in prices.yaml. "
        "Rates are USD per million tokens; an entry replaces the packaged one."
    )


class PriceCatalogOut(BaseModel):
    version: int
    """0 while no overlay was stored; instances then use the packaged catalogue alone."""
    updated_at: datetime | None
    updated_by: str | None
    providers: dict[str, Any]


class PriceService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self) -> PriceCatalogOut:
        async with self._store.read() as session:
            row = await session.get(PriceCatalogRow, 1)
        return _out(row)

    async def put(self, body: PriceCatalogIn, actor: Actor) -> PriceCatalogOut:
        """Store a new overlay version and make a snapshot version that carries it.

        Raises:
            ObjectInvalid: an entry is invalid; the issue names it.
        """
        try:
            PriceCatalog.from_dict({"providers": body.providers}, origin="providers")
        except ConfigError as exc:
            raise ObjectInvalid.one("providers", exc.message) from None
        async with self._store.write(actor) as tx:
            row = await tx.session.get(PriceCatalogRow, 1)
            before = _out(row).model_dump(mode="json") if row is not None else None
            if row is not None and row.spec == {"providers": body.providers}:
                return _out(row)
            version = (row.version if row is not None else 0) + 1
            if row is None:
                row = PriceCatalogRow(id=1, version=version, updated_by=actor.name)
                tx.session.add(row)
            row.version = version
            row.spec = {"providers": body.providers}
            row.updated_at = utc_now()
            row.updated_by = actor.name
            await tx.session.flush()
            after = _out(row)
            tx.audit("update", "price_catalog", "prices", before, after.model_dump(mode="json"))
            tx.changed(f"update the price catalogue to version {version}")
        return after


def _out(row: PriceCatalogRow | None) -> PriceCatalogOut:
    if row is None:
        return PriceCatalogOut(version=0, updated_at=None, updated_by=None, providers={})
    return PriceCatalogOut(
        version=row.version,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
        providers=row.spec["providers"],
    )
