"""Credentials: admin tokens with roles, one-time enrollment tokens and instance credentials.

Every token is 256 random bits and stored only as its SHA-256, so a plain hash suffices.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta

from sqlalchemy import func, select, update

from smartflow.auth.keys import hash_key
from smartflow.control.models import (
    AdminTokenCreated,
    AdminTokenIn,
    AdminTokenOut,
    EnrollIn,
    EnrollmentTokenCreated,
    EnrollmentTokenIn,
    EnrollmentTokenOut,
)
from smartflow.control.services.context import SYSTEM, Actor
from smartflow.control.services.errors import Conflict, ObjectInvalid
from smartflow.control.services.transactions import Store
from smartflow.control.store.tables import (
    AdminTokenRow,
    EnrollmentTokenRow,
    InstanceRow,
    utc_now,
)
from smartflow.core.errors import AuthenticationError, NotFound, PermissionDenied

__all__ = [
    "ADMIN_TOKEN_PREFIX",
    "ENROLLMENT_TOKEN_PREFIX",
    "INSTANCE_CREDENTIAL_PREFIX",
    "AccessService",
]

logger = logging.getLogger(__name__)

ADMIN_TOKEN_PREFIX = "sf-admin-"
ENROLLMENT_TOKEN_PREFIX = "sf-enroll-"
INSTANCE_CREDENTIAL_PREFIX = "sf-inst-"
BOOTSTRAP_TOKEN_NAME = "bootstrap"

_ENROLL_FAILED = "enrollment token is invalid, expired or already used; ask an admin for a new one"


def _new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def _admin_out(row: AdminTokenRow) -> AdminTokenOut:
    return AdminTokenOut(
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        created_by=row.created_by,
        fingerprint=row.sha256[:12],
    )


def _enrollment_out(row: EnrollmentTokenRow) -> EnrollmentTokenOut:
    if row.used_at is not None:
        state = "used"
    elif row.expires_at <= utc_now():
        state = "expired"
    else:
        state = "active"
    return EnrollmentTokenOut(
        id=row.id,
        site=row.site,
        description=row.description,
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        used_at=row.used_at,
        used_by=row.used_by,
        state=state,
    )


class AccessService:
    def __init__(self, store: Store, enrollment_max_ttl_s: int) -> None:
        self._store = store
        self._max_ttl_s = enrollment_max_ttl_s

    # --- admin tokens ---------------------------------------------------------------------

    async def bootstrap(self, token: str | None) -> str | None:
        """Register a first admin token when the store has none.

        ``token`` is registered as given. Without it a new token is made and returned, so
        the caller can show it once to the operator; it is never logged or written to
        disk. Returns None when no new token was made.
        """
        created = None
        async with self._store.write(SYSTEM) as tx:
            count = await tx.session.scalar(select(func.count()).select_from(AdminTokenRow))
            if count:
                return None
            if token is None:
                token = created = _new_token(ADMIN_TOKEN_PREFIX)
            row = AdminTokenRow(
                name=BOOTSTRAP_TOKEN_NAME,
                sha256=hash_key(token),
                role="admin",
                created_by=SYSTEM.name,
                created_at=utc_now(),
            )
            tx.session.add(row)
            await tx.session.flush()
            tx.audit("create", "admin_token", row.name, None, _admin_out(row).model_dump())
        if created is not None:
            logger.warning(
                "no admin token existed: created admin token %r, shown once on the console; "
                "create named tokens with POST /v1/admin-tokens",
                BOOTSTRAP_TOKEN_NAME,
            )
        else:
            logger.info("registered the configured admin token as %r", BOOTSTRAP_TOKEN_NAME)
        return created

    async def authenticate_admin(self, token: str) -> Actor:
        async with self._store.read() as session:
            row = await session.scalar(
                select(AdminTokenRow).where(AdminTokenRow.sha256 == hash_key(token))
            )
        if row is None:
            raise AuthenticationError("invalid admin token")
        return Actor(name=row.name, kind="admin_token", role=row.role)  # type: ignore[arg-type]

    async def list_admin_tokens(self) -> list[AdminTokenOut]:
        async with self._store.read() as session:
            rows = (await session.scalars(select(AdminTokenRow).order_by(AdminTokenRow.name))).all()
        return [_admin_out(row) for row in rows]

    async def create_admin_token(self, body: AdminTokenIn, actor: Actor) -> AdminTokenCreated:
        token = _new_token(ADMIN_TOKEN_PREFIX)
        async with self._store.write(actor) as tx:
            exists = await tx.session.scalar(
                select(AdminTokenRow.id).where(AdminTokenRow.name == body.name)
            )
            if exists is not None:
                raise Conflict(f"admin token {body.name!r} already exists; choose another name")
            row = AdminTokenRow(
                name=body.name,
                sha256=hash_key(token),
                role=body.role,
                created_by=actor.name,
                created_at=utc_now(),
            )
            tx.session.add(row)
            await tx.session.flush()
            out = _admin_out(row)
            tx.audit("create", "admin_token", row.name, None, out.model_dump(mode="json"))
        return AdminTokenCreated(**out.model_dump(), token=token)

    async def delete_admin_token(self, name: str, actor: Actor) -> None:
        async with self._store.write(actor) as tx:
            row = await tx.session.scalar(select(AdminTokenRow).where(AdminTokenRow.name == name))
            if row is None:
                raise NotFound(f"admin token {name!r} not found")
            if row.role == "admin":
                admins = await tx.session.scalar(
                    select(func.count())
                    .select_from(AdminTokenRow)
                    .where(AdminTokenRow.role == "admin")
                )
                if admins == 1:
                    raise Conflict("cannot delete the last admin token; create another first")
            before = _admin_out(row).model_dump(mode="json")
            await tx.session.delete(row)
            tx.audit("delete", "admin_token", name, before, None)

    # --- enrollment ------------------------------------------------------------------------

    async def list_enrollment_tokens(self) -> list[EnrollmentTokenOut]:
        async with self._store.read() as session:
            query = select(EnrollmentTokenRow).order_by(EnrollmentTokenRow.id)
            rows = (await session.scalars(query)).all()
        return [_enrollment_out(row) for row in rows]

    async def create_enrollment_token(
        self, body: EnrollmentTokenIn, actor: Actor
    ) -> EnrollmentTokenCreated:
        if body.ttl_s > self._max_ttl_s:
            raise ObjectInvalid.one(
                "ttl_s", f"ttl_s is {body.ttl_s}; the maximum is {self._max_ttl_s} seconds"
            )
        token = _new_token(ENROLLMENT_TOKEN_PREFIX)
        now = utc_now()
        async with self._store.write(actor) as tx:
            row = EnrollmentTokenRow(
                sha256=hash_key(token),
                site=body.site,
                description=body.description,
                created_at=now,
                created_by=actor.name,
                expires_at=now + timedelta(seconds=body.ttl_s),
            )
            tx.session.add(row)
            await tx.session.flush()
            out = _enrollment_out(row)
            tx.audit("create", "enrollment_token", str(row.id), None, out.model_dump(mode="json"))
        return EnrollmentTokenCreated(**out.model_dump(), token=token)

    async def delete_enrollment_token(self, token_id: int, actor: Actor) -> None:
        async with self._store.write(actor) as tx:
            row = await tx.session.get(EnrollmentTokenRow, token_id)
            if row is None:
                raise NotFound(f"enrollment token {token_id} not found")
            before = _enrollment_out(row).model_dump(mode="json")
            await tx.session.delete(row)
            tx.audit("delete", "enrollment_token", str(token_id), before, None)

    async def enroll(self, body: EnrollIn) -> tuple[InstanceRow, str]:
        """Consume a one-time enrollment token and register a new instance.

        Returns the instance and its credential, which is stored only as a hash.

        Raises:
            AuthenticationError: the token is unknown, expired or used.
            PermissionDenied: the token is limited to another site.
            Conflict: an instance with that name exists (the token stays unused).
        """
        digest = hash_key(body.token.get_secret_value())
        actor = Actor(name=body.name, kind="enrollment")
        credential = _new_token(INSTANCE_CREDENTIAL_PREFIX)
        now = utc_now()
        async with self._store.write(actor) as tx:
            token = await tx.session.scalar(
                select(EnrollmentTokenRow).where(EnrollmentTokenRow.sha256 == digest)
            )
            if token is None or token.used_at is not None or token.expires_at <= now:
                raise AuthenticationError(_ENROLL_FAILED)
            if token.site is not None and token.site != body.site:
                raise PermissionDenied(
                    f"this enrollment token enrolls into site {token.site!r} only, not "
                    f"{body.site!r}"
                )
            existing = await tx.session.scalar(
                select(InstanceRow.id).where(InstanceRow.name == body.name)
            )
            if existing is not None:
                raise Conflict(
                    f"an instance named {body.name!r} is already enrolled; choose another name or "
                    "delete that instance first"
                )
            # The update matches only an unused token. On PostgreSQL a concurrent update of
            # the same row waits for this commit and then matches nothing, so another
            # control-plane process cannot use the token a second time.
            consumed = await tx.session.execute(
                update(EnrollmentTokenRow)
                .where(EnrollmentTokenRow.id == token.id, EnrollmentTokenRow.used_at.is_(None))
                .values(used_at=now, used_by=body.name)
            )
            if consumed.rowcount != 1:  # type: ignore[attr-defined]
                raise AuthenticationError(_ENROLL_FAILED)
            instance = InstanceRow(
                name=body.name,
                site=body.site,
                credential_sha256=hash_key(credential),
                enrolled_at=now,
                sync_state="enrolled",
            )
            tx.session.add(instance)
            await tx.session.flush()
            tx.audit(
                "enroll",
                "instance",
                body.name,
                None,
                {"name": body.name, "site": body.site, "enrollment_token": token.id},
            )
        logger.info("instance %s enrolled at site %s", body.name, body.site)
        return instance, credential

    async def authenticate_instance(self, credential: str) -> InstanceRow:
        async with self._store.read() as session:
            row = await session.scalar(
                select(InstanceRow).where(InstanceRow.credential_sha256 == hash_key(credential))
            )
        if row is None:
            raise AuthenticationError("invalid instance credential; enroll the instance again")
        return row
