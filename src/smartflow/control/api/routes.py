"""Every endpoint of the control-plane API, declared once: path, role, bodies and handler."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from smartflow.control.api.analytics import ANALYTICS_OPERATIONS
from smartflow.control.api.routing import Call, Operation, Reply
from smartflow.control.api.sync import CLOSE_REVOKED, STREAMS_KEY, sync_stream
from smartflow.control.models import (
    AdminTokenCreated,
    AdminTokenIn,
    AdminTokenList,
    AuditPage,
    AuditQuery,
    EnrollIn,
    EnrollmentTokenCreated,
    EnrollmentTokenIn,
    EnrollmentTokenList,
    EnrollOut,
    Health,
    InstanceList,
    InstanceOut,
    PolicyList,
    PolicyOut,
    PolicyVersionList,
    SigningKeyOut,
    SnapshotVersionDetail,
    SnapshotVersionList,
)
from smartflow.control.services.kinds import KINDS
from smartflow.control.services.objects import Kind
from smartflow.core.errors import NotFound
from smartflow.policy.documents import PolicyDocument
from smartflow.sync.protocol import NAME_PATTERN, CacheSettings
from smartflow.sync.signing import ALGORITHM

__all__ = ["OPERATIONS", "SYNC_PATH"]

SYNC_PATH = "/v1/sync"

_NAME_PARAM = {"name": {"type": "string", "pattern": NAME_PATTERN}}


class SnapshotQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    limit: int = Field(50, ge=1, le=1000)


# --- system ----------------------------------------------------------------------------


async def _health(call: Call) -> Health:
    return Health(status="ok", version=await call.plane.instances.head())


async def _signing_key(call: Call) -> SigningKeyOut:
    verify_key = call.plane.signing_key.verify_key
    return SigningKeyOut(
        key_id=verify_key.key_id, algorithm=ALGORITHM, public_key=verify_key.to_base64()
    )


# --- enrollment and instances ------------------------------------------------------------


async def _enroll(call: Call) -> Reply:
    instance, credential = await call.plane.access.enroll(call.body)
    signing_key = await _signing_key(call)
    body = EnrollOut(
        instance=instance.name,
        site=instance.site,
        credential=credential,
        signing_key=signing_key,
        sync_path=SYNC_PATH,
    )
    return Reply(body, 201)


async def _list_instances(call: Call) -> InstanceList:
    return InstanceList(items=await call.plane.instances.list_all())


async def _get_instance(call: Call) -> InstanceOut:
    return await call.plane.instances.get(call.param("name"))


async def _delete_instance(call: Call) -> None:
    name = call.param("name")
    await call.plane.instances.delete(name, call.signed_in)
    await call.request.app[STREAMS_KEY].close(name, CLOSE_REVOKED, "instance deleted")


# --- admin and enrollment tokens -----------------------------------------------------------


async def _list_admin_tokens(call: Call) -> AdminTokenList:
    return AdminTokenList(items=await call.plane.access.list_admin_tokens())


async def _create_admin_token(call: Call) -> AdminTokenCreated:
    return await call.plane.access.create_admin_token(call.body, call.signed_in)


async def _delete_admin_token(call: Call) -> None:
    await call.plane.access.delete_admin_token(call.param("name"), call.signed_in)


async def _list_enrollment_tokens(call: Call) -> EnrollmentTokenList:
    return EnrollmentTokenList(items=await call.plane.access.list_enrollment_tokens())


async def _create_enrollment_token(call: Call) -> EnrollmentTokenCreated:
    return await call.plane.access.create_enrollment_token(call.body, call.signed_in)


async def _delete_enrollment_token(call: Call) -> None:
    text = call.param("id")
    if not text.isdigit() or len(text) > 18:
        raise NotFound(f"enrollment token {text} not found")
    await call.plane.access.delete_enrollment_token(int(text), call.signed_in)


# --- policies, cache, history -----------------------------------------------------------------


async def _list_policies(call: Call) -> PolicyList:
    return PolicyList(items=await call.plane.policies.current())


async def _get_policy(call: Call) -> PolicyOut:
    return await call.plane.policies.get(call.param("name"))


async def _put_policy(call: Call) -> Reply:
    policy, created = await call.plane.policies.put(call.param("name"), call.body, call.signed_in)
    return Reply(policy, 201 if created else 200)


async def _delete_policy(call: Call) -> None:
    await call.plane.policies.delete(call.param("name"), call.signed_in)


async def _policy_versions(call: Call) -> PolicyVersionList:
    return PolicyVersionList(items=await call.plane.policies.versions(call.param("name")))


async def _get_cache(call: Call) -> CacheSettings:
    return await call.plane.objects.get_cache()


async def _put_cache(call: Call) -> CacheSettings:
    return await call.plane.objects.put_cache(call.body, call.signed_in)


async def _audit(call: Call) -> AuditPage:
    return await call.plane.history.audit(call.query)


async def _snapshots(call: Call) -> SnapshotVersionList:
    return SnapshotVersionList(items=await call.plane.history.snapshot_versions(call.query.limit))


async def _snapshot(call: Call) -> SnapshotVersionDetail:
    text = call.param("version")
    if not text.isdigit() or len(text) > 18:
        raise NotFound(f"snapshot version {text} not found")
    return await call.plane.history.snapshot_version(int(text))


# --- named central objects ---------------------------------------------------------------------


def _kind_operations(kind: Kind[Any]) -> list[Operation]:
    """Return list, get, put and delete operations for one kind of object."""
    collection = f"/v1/{kind.path}"
    item = collection + "/{name}"
    list_model = create_model(
        f"{kind.view_model.__name__.removesuffix('Out')}List",
        __base__=BaseModel,
        items=(list[kind.view_model], ...),  # type: ignore[name-defined]
    )
    name_param = {"name": {"type": "string", "pattern": kind.name_pattern}}
    stem = kind.object_type.title().replace("_", "")
    plural = "".join(part.title() for part in kind.path.split("-"))

    async def list_objects(call: Call) -> BaseModel:
        return list_model(items=await call.plane.objects.list_all(kind))

    async def get_object(call: Call) -> BaseModel:
        return await call.plane.objects.get(kind, call.param("name"))

    async def put_object(call: Call) -> Reply:
        result = await call.plane.objects.put(kind, call.param("name"), call.body, call.signed_in)
        return Reply(result.view, 201 if result.created else 200)

    async def delete_object(call: Call) -> None:
        await call.plane.objects.delete(kind, call.param("name"), call.signed_in)

    tag = kind.path
    return [
        Operation(
            "GET",
            collection,
            f"list{plural}",
            f"List {kind.title}s",
            tag,
            list_objects,
            response=list_model,
        ),
        Operation(
            "GET",
            item,
            f"get{stem}",
            f"Get one {kind.title}",
            tag,
            get_object,
            response=kind.view_model,
            path_params=name_param,
            errors=(404,),
        ),
        Operation(
            "PUT",
            item,
            f"put{stem}",
            f"Create or replace a {kind.title}",
            tag,
            put_object,
            role=kind.write_role,
            body=kind.body,
            response=kind.view_model,
            also={201: f"The {kind.title} was created."},
            path_params=name_param,
            errors=(409,),
        ),
        Operation(
            "DELETE",
            item,
            f"delete{stem}",
            f"Delete a {kind.title}",
            tag,
            delete_object,
            role=kind.write_role,
            status=204,
            path_params=name_param,
            errors=(404, 409),
        ),
    ]


def _operations() -> list[Operation]:
    operations = [
        Operation(
            "GET", "/healthz", "health", "Report health", "system", _health, "none", response=Health
        ),
        Operation(
            "GET",
            "/v1/signing-key",
            "getSigningKey",
            "Get the snapshot signing key",
            "system",
            _signing_key,
            "none",
            response=SigningKeyOut,
        ),
        Operation(
            "POST",
            "/v1/enroll",
            "enroll",
            "Enroll an instance with a one-time token",
            "instances",
            _enroll,
            "none",
            body=EnrollIn,
            response=EnrollOut,
            status=201,
            errors=(401, 403, 409),
        ),
        Operation(
            "GET",
            SYNC_PATH,
            "sync",
            "Open the sync stream (WebSocket)",
            "instances",
            sync_stream,
            "instance",
            websocket=True,
            description="Upgrades to a WebSocket. The control plane sends signed "
            'snapshots; the instance replies {"version": N} after applying version N, '
            'or {"version": N, "error": "..."} to reject it.',
        ),
        Operation(
            "GET",
            "/v1/instances",
            "listInstances",
            "List instances and their sync state",
            "instances",
            _list_instances,
            response=InstanceList,
        ),
        Operation(
            "GET",
            "/v1/instances/{name}",
            "getInstance",
            "Get one instance",
            "instances",
            _get_instance,
            response=InstanceOut,
            path_params=_NAME_PARAM,
            errors=(404,),
        ),
        Operation(
            "DELETE",
            "/v1/instances/{name}",
            "deleteInstance",
            "Delete an instance and revoke its credential",
            "instances",
            _delete_instance,
            role="admin",
            status=204,
            path_params=_NAME_PARAM,
            errors=(404,),
        ),
        Operation(
            "GET",
            "/v1/admin-tokens",
            "listAdminTokens",
            "List admin tokens",
            "tokens",
            _list_admin_tokens,
            role="admin",
            response=AdminTokenList,
        ),
        Operation(
            "POST",
            "/v1/admin-tokens",
            "createAdminToken",
            "Create an admin token",
            "tokens",
            _create_admin_token,
            role="admin",
            body=AdminTokenIn,
            response=AdminTokenCreated,
            status=201,
            errors=(409,),
        ),
        Operation(
            "DELETE",
            "/v1/admin-tokens/{name}",
            "deleteAdminToken",
            "Delete an admin token",
            "tokens",
            _delete_admin_token,
            role="admin",
            status=204,
            path_params=_NAME_PARAM,
            errors=(404, 409),
        ),
        Operation(
            "GET",
            "/v1/enrollment-tokens",
            "listEnrollmentTokens",
            "List enrollment tokens",
            "tokens",
            _list_enrollment_tokens,
            role="admin",
            response=EnrollmentTokenList,
        ),
        Operation(
            "POST",
            "/v1/enrollment-tokens",
            "createEnrollmentToken",
            "Create a one-time enrollment token",
            "tokens",
            _create_enrollment_token,
            role="admin",
            body=EnrollmentTokenIn,
            response=EnrollmentTokenCreated,
            status=201,
        ),
        Operation(
            "DELETE",
            "/v1/enrollment-tokens/{id}",
            "deleteEnrollmentToken",
            "Delete an enrollment token",
            "tokens",
            _delete_enrollment_token,
            role="admin",
            status=204,
            path_params={"id": {"type": "integer", "minimum": 1}},
            errors=(404,),
        ),
        Operation(
            "GET",
            "/v1/policies",
            "listPolicies",
            "List the current policies",
            "policies",
            _list_policies,
            response=PolicyList,
        ),
        Operation(
            "GET",
            "/v1/policies/{name}",
            "getPolicy",
            "Get the current version of a policy",
            "policies",
            _get_policy,
            response=PolicyOut,
            path_params=_NAME_PARAM,
            errors=(404,),
        ),
        Operation(
            "PUT",
            "/v1/policies/{name}",
            "putPolicy",
            "Apply a policy document as the policy's next version",
            "policies",
            _put_policy,
            role="policy_editor",
            body=PolicyDocument,
            parse_body=False,
            response=PolicyOut,
            also={201: "A new version was stored."},
            path_params=_NAME_PARAM,
            errors=(409,),
            description="Returns 200 without a new version when the document equals "
            "the current version.",
        ),
        Operation(
            "DELETE",
            "/v1/policies/{name}",
            "deletePolicy",
            "Delete a policy (its versions stay in the history)",
            "policies",
            _delete_policy,
            role="policy_editor",
            status=204,
            path_params=_NAME_PARAM,
            errors=(404,),
        ),
        Operation(
            "GET",
            "/v1/policies/{name}/versions",
            "listPolicyVersions",
            "List every version of a policy",
            "policies",
            _policy_versions,
            response=PolicyVersionList,
            path_params=_NAME_PARAM,
            errors=(404,),
        ),
        Operation(
            "GET",
            "/v1/cache-settings",
            "getCacheSettings",
            "Get the cache settings",
            "cache",
            _get_cache,
            response=CacheSettings,
        ),
        Operation(
            "PUT",
            "/v1/cache-settings",
            "putCacheSettings",
            "Replace the cache settings",
            "cache",
            _put_cache,
            role="admin",
            body=CacheSettings,
            response=CacheSettings,
        ),
        Operation(
            "GET",
            "/v1/audit",
            "listAudit",
            "List audit entries, newest first",
            "audit",
            _audit,
            query=AuditQuery,
            response=AuditPage,
        ),
        Operation(
            "GET",
            "/v1/snapshots",
            "listSnapshots",
            "List snapshot versions, newest first",
            "snapshots",
            _snapshots,
            query=SnapshotQuery,
            response=SnapshotVersionList,
        ),
        Operation(
            "GET",
            "/v1/snapshots/{version}",
            "getSnapshot",
            "Get one snapshot version's content, without credentials",
            "snapshots",
            _snapshot,
            response=SnapshotVersionDetail,
            path_params={"version": {"type": "integer", "minimum": 1}},
            errors=(404,),
        ),
    ]
    operations.extend(ANALYTICS_OPERATIONS)
    for kind in KINDS:
        operations.extend(_kind_operations(kind))
    return operations


OPERATIONS: tuple[Operation, ...] = tuple(_operations())
"""Every endpoint except ``/openapi.json``, which describes them."""
