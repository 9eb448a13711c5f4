"""Admin API tests against a running control plane: roles, audit, enrollment, secrets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import select, text

from smartflow.control.api.routes import OPERATIONS
from smartflow.control.services.kinds import KINDS
from smartflow.control.store.tables import AuditRow
from tests.control.conftest import ADMIN_TOKEN, Api

PROVIDER_SECRET = "sk-fake-provider-secret-AAAA1111"
AWS_SECRET = "fake-aws-secret-BBBB2222"


def provider_body(site: str = "onprem", secret: str = PROVIDER_SECRET) -> dict[str, Any]:
    return {
        "site": site,
        "settings": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"},
        "credentials": {"api_key": secret},
    }


def policy_body(name: str = "pii") -> dict[str, Any]:
    return {
        "apiVersion": "smartflow/v1",
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"entities": [{"type": "EMAIL", "action": "redact"}]},
    }


async def token_with_role(api: Api, name: str, role: str) -> str:
    created = await api.ok("POST", "/v1/admin-tokens", json={"name": name, "role": role})
    assert created["role"] == role
    return str(created["token"])


# --- authentication and roles ---------------------------------------------------------


async def test_missing_token_is_401(api: Api) -> None:
    status, body = await api.call("GET", "/v1/providers", token=None)
    assert status == 401
    assert body["error"]["code"] == "authentication_failed"


async def test_wrong_token_is_401(api: Api) -> None:
    status, body = await api.call("GET", "/v1/providers", token="sf-admin-wrong")
    assert status == 401
    assert body["error"]["message"] == "invalid admin token"


async def test_viewer_reads_but_cannot_write(api: Api) -> None:
    viewer = await token_with_role(api, "reader", "viewer")
    status, _ = await api.call("GET", "/v1/providers", token=viewer)
    assert status == 200
    status, body = await api.call("PUT", "/v1/teams/a", token=viewer, json={})
    assert status == 403
    assert "needs admin" in body["error"]["message"]
    status, _ = await api.call("PUT", "/v1/policies/pii", token=viewer, json=policy_body())
    assert status == 403
    status, _ = await api.call("GET", "/v1/admin-tokens", token=viewer)
    assert status == 403


async def test_policy_editor_scope(api: Api) -> None:
    editor = await token_with_role(api, "editor", "policy_editor")
    status, _ = await api.call("PUT", "/v1/policies/pii", token=editor, json=policy_body())
    assert status == 201
    rule = {"label": "confidential", "allowed_sites": ["onprem"]}
    status, _ = await api.call("PUT", "/v1/compliance-rules/conf", token=editor, json=rule)
    assert status == 201
    status, _ = await api.call("PUT", "/v1/providers/oa", token=editor, json=provider_body())
    assert status == 403
    status, _ = await api.call("POST", "/v1/enrollment-tokens", token=editor, json={})
    assert status == 403


async def test_every_write_operation_needs_more_than_viewer(api: Api) -> None:
    for operation in OPERATIONS:
        if operation.method in ("PUT", "POST", "DELETE") and operation.auth == "admin":
            assert operation.role != "viewer", operation.operation_id


async def test_last_admin_token_kept(api: Api) -> None:
    status, body = await api.call("DELETE", "/v1/admin-tokens/bootstrap")
    assert status == 409
    assert "last admin token" in body["error"]["message"]
    second = await token_with_role(api, "second-admin", "admin")
    status, _ = await api.call("DELETE", "/v1/admin-tokens/bootstrap", token=second)
    assert status == 204
    status, _ = await api.call("GET", "/v1/providers", token=ADMIN_TOKEN)
    assert status == 401


# --- secrets --------------------------------------------------------------------------


async def test_provider_credentials_never_returned(api: Api) -> None:
    created = await api.ok("PUT", "/v1/providers/oa", json=provider_body())
    assert created["credentials_set"] == ["api_key"]
    texts = [orjson.dumps(created).decode()]
    texts.append(orjson.dumps(await api.ok("GET", "/v1/providers/oa")).decode())
    texts.append(orjson.dumps(await api.ok("GET", "/v1/providers")).decode())
    snapshots = await api.ok("GET", "/v1/snapshots")
    newest = snapshots["items"][0]["version"]
    texts.append(orjson.dumps(await api.ok("GET", f"/v1/snapshots/{newest}")).decode())
    texts.append(orjson.dumps(await api.ok("GET", "/v1/audit")).decode())
    for body in texts:
        assert PROVIDER_SECRET not in body


async def test_inline_secret_in_settings_rejected(api: Api) -> None:
    body = provider_body()
    body["settings"]["api_key"] = PROVIDER_SECRET
    status, reply = await api.call("PUT", "/v1/providers/oa", json=body)
    assert status == 422
    assert "api_key" in reply["error"]["message"]
    assert PROVIDER_SECRET not in orjson.dumps(reply).decode()


async def test_credentials_must_fit_provider_type(api: Api) -> None:
    body = {
        "site": "cloud",
        "settings": {"type": "bedrock", "region": "us-east-1"},
        "credentials": {"api_key": "sk-fake-0"},
    }
    status, reply = await api.call("PUT", "/v1/providers/br", json=body)
    assert status == 422
    assert reply["error"]["issues"][0]["path"] == "credentials"


async def test_audit_masks_every_secret(api: Api) -> None:
    await api.ok("PUT", "/v1/providers/oa", json=provider_body())
    bedrock = {
        "site": "cloud",
        "settings": {"type": "bedrock", "region": "us-east-1"},
        "credentials": {"aws_access_key_id": "AKIAFAKEFAKE", "aws_secret_access_key": AWS_SECRET},
    }
    await api.ok("PUT", "/v1/providers/br", json=bedrock)
    key = await api.ok("PUT", "/v1/keys/app", json={})
    admin = await api.ok("POST", "/v1/admin-tokens", json={"name": "ops", "role": "viewer"})
    enrollment = await api.ok("POST", "/v1/enrollment-tokens", json={"site": "onprem"})
    enrolled = await api.enroll("edge-1", "onprem")

    secrets = [
        ADMIN_TOKEN,
        PROVIDER_SECRET,
        "AKIAFAKEFAKE",
        AWS_SECRET,
        key["key"],
        admin["token"],
        enrollment["token"],
        enrolled["credential"],
    ]

    audit = await api.ok("GET", "/v1/audit?limit=1000")
    audit_text = orjson.dumps(audit).decode()
    for secret in secrets:
        assert secret not in audit_text
    async with api.plane.store.read() as session:
        rows = (await session.scalars(select(AuditRow))).all()
        stored = " ".join(f"{row.before} {row.after}" for row in rows)
        dump = await session.execute(text("SELECT * FROM audit_log"))
        raw = str(dump.all())
    for secret in secrets:
        assert secret not in stored
        assert secret not in raw

    types = {entry["object_type"] for entry in audit["entries"]}
    assert {"provider", "virtual_key", "admin_token", "enrollment_token", "instance"} <= types


async def test_every_kind_of_change_audited(api: Api) -> None:
    await api.ok("PUT", "/v1/providers/oa", json=provider_body())
    await api.ok("PUT", "/v1/deployments/d", json={"provider": "oa", "model": "gpt-4o"})
    await api.ok("PUT", "/v1/model-aliases/gpt-4o", json={"deployments": ["d"]})
    await api.ok("PUT", "/v1/pinned-tunings/d", json={"params": {"top_k": 40}})
    await api.ok("PUT", "/v1/teams/t", json={})
    await api.ok("PUT", "/v1/keys/k", json={"team": "t"})
    await api.ok("PUT", "/v1/compliance-rules/c", json={"label": "internal"})
    await api.ok("PUT", "/v1/policies/pii", json=policy_body())
    await api.ok("PUT", "/v1/cache-settings", json={"enabled": True})
    profile = {"document": {"effort_budgets": {"low": 2048}}}
    await api.ok("PUT", "/v1/normalization-profiles/budgets", json=profile)

    audit = await api.ok("GET", "/v1/audit?limit=1000")
    types = {entry["object_type"] for entry in audit["entries"]}
    expected = {kind.object_type for kind in KINDS} | {"policy", "cache_settings"}
    assert expected <= types
    snapshots = await api.ok("GET", "/v1/snapshots?limit=1000")
    assert len(snapshots["items"]) == 11


async def test_audit_records_before_and_after(api: Api) -> None:
    await api.ok("PUT", "/v1/teams/research", json={"description": "old"})
    await api.ok("PUT", "/v1/teams/research", json={"description": "new"})
    await api.ok("DELETE", "/v1/teams/research")
    audit = await api.ok("GET", "/v1/audit?object_type=team&object_name=research")
    entries = audit["entries"]
    assert [entry["action"] for entry in entries] == ["delete", "update", "create"]
    assert entries[1]["before"]["description"] == "old"
    assert entries[1]["after"]["description"] == "new"
    assert entries[0]["after"] is None
    assert all(entry["actor"] == "bootstrap" for entry in entries)


async def test_audit_pages_back(api: Api) -> None:
    for index in range(5):
        await api.ok("PUT", f"/v1/teams/t{index}", json={})
    first = await api.ok("GET", "/v1/audit?limit=2&object_type=team")
    assert len(first["entries"]) == 2
    assert first["next_before"] == first["entries"][-1]["id"]
    second = await api.ok(
        "GET", f"/v1/audit?limit=2&object_type=team&before={first['next_before']}"
    )
    assert second["entries"][0]["id"] < first["entries"][-1]["id"]


async def test_generated_key_returned_once(api: Api) -> None:
    created = await api.ok("PUT", "/v1/keys/app", json={"labels": ["internal"]})
    assert created["key"].startswith("sk-sf-")
    again = await api.ok("GET", "/v1/keys/app")
    assert again["key"] is None
    assert again["fingerprint"] == created["fingerprint"]
    updated = await api.ok("PUT", "/v1/keys/app", json={"labels": []})
    assert updated["key"] is None
    assert updated["fingerprint"] == created["fingerprint"]


# --- enrollment -----------------------------------------------------------------------


async def test_enrollment_token_is_one_time(api: Api) -> None:
    token = await api.ok("POST", "/v1/enrollment-tokens", json={})
    first = {"token": token["token"], "name": "edge-1", "site": "onprem"}
    status, enrolled = await api.call("POST", "/v1/enroll", token=None, json=first)
    assert status == 201
    assert enrolled["credential"].startswith("sf-inst-")
    assert enrolled["signing_key"]["algorithm"] == "ed25519"
    second = {"token": token["token"], "name": "edge-2", "site": "onprem"}
    status, body = await api.call("POST", "/v1/enroll", token=None, json=second)
    assert status == 401
    assert "already used" in body["error"]["message"]
    tokens = await api.ok("GET", "/v1/enrollment-tokens")
    assert tokens["items"][0]["state"] == "used"
    assert tokens["items"][0]["used_by"] == "edge-1"


async def test_enrollment_site_limit(api: Api) -> None:
    token = await api.ok("POST", "/v1/enrollment-tokens", json={"site": "cloud"})
    wrong = {"token": token["token"], "name": "edge", "site": "onprem"}
    status, body = await api.call("POST", "/v1/enroll", token=None, json=wrong)
    assert status == 403
    assert "site 'cloud' only" in body["error"]["message"]
    right = {"token": token["token"], "name": "edge", "site": "cloud"}
    status, _ = await api.call("POST", "/v1/enroll", token=None, json=right)
    assert status == 201


async def test_enrollment_name_taken_keeps_token(api: Api) -> None:
    await api.enroll("edge", "onprem")
    token = await api.ok("POST", "/v1/enrollment-tokens", json={})
    duplicate = {"token": token["token"], "name": "edge", "site": "onprem"}
    status, _ = await api.call("POST", "/v1/enroll", token=None, json=duplicate)
    assert status == 409
    fresh = {"token": token["token"], "name": "edge-2", "site": "onprem"}
    status, _ = await api.call("POST", "/v1/enroll", token=None, json=fresh)
    assert status == 201


async def test_enrollment_ttl_limit(api: Api) -> None:
    status, body = await api.call("POST", "/v1/enrollment-tokens", json={"ttl_s": 10**9})
    assert status == 422
    assert body["error"]["issues"][0]["path"] == "ttl_s"


async def test_instance_listing_and_deletion(api: Api) -> None:
    await api.enroll("edge", "onprem")
    instance = await api.ok("GET", "/v1/instances/edge")
    assert instance["sync_state"] == "enrolled"
    assert instance["applied_version"] is None
    assert instance["connected"] is False
    await api.ok("DELETE", "/v1/instances/edge")
    status, _ = await api.call("GET", "/v1/instances/edge")
    assert status == 404


# --- validation and references --------------------------------------------------------


async def test_invalid_policy_lists_issues(api: Api) -> None:
    body = policy_body()
    body["spec"]["entities"] = [{"type": "NOT_AN_ENTITY", "action": "redact"}]
    status, reply = await api.call("PUT", "/v1/policies/pii", json=body)
    assert status == 422
    assert reply["error"]["issues"][0]["path"] == "spec.entities[0].type"


async def test_policy_name_must_match_url(api: Api) -> None:
    status, reply = await api.call("PUT", "/v1/policies/other", json=policy_body("pii"))
    assert status == 422
    assert reply["error"]["issues"][0]["path"] == "metadata.name"


async def test_references_checked(api: Api) -> None:
    status, reply = await api.call("PUT", "/v1/deployments/d", json={"provider": "x", "model": "m"})
    assert status == 422
    assert reply["error"]["issues"][0]["path"] == "provider"
    await api.ok("PUT", "/v1/providers/oa", json=provider_body())
    await api.ok("PUT", "/v1/deployments/d", json={"provider": "oa", "model": "gpt-4o"})
    await api.ok("PUT", "/v1/model-aliases/gpt-4o", json={"deployments": ["d"]})
    status, reply = await api.call("DELETE", "/v1/deployments/d")
    assert status == 409
    assert "model alias gpt-4o" in reply["error"]["message"]


async def test_put_returns_201_then_200(api: Api) -> None:
    status, _ = await api.call("PUT", "/v1/teams/a", json={"description": "x"})
    assert status == 201
    status, _ = await api.call("PUT", "/v1/teams/a", json={"description": "y"})
    assert status == 200


async def test_body_errors(api: Api) -> None:
    status, reply = await api.call(
        "PUT", "/v1/teams/a", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert "not valid JSON" in reply["error"]["message"]
    status, reply = await api.call("PUT", "/v1/teams/a", json={"unknown": 1})
    assert status == 422
    assert reply["error"]["issues"][0]["path"] == "unknown"


async def test_unknown_path_is_json_404(api: Api) -> None:
    status, reply = await api.call("GET", "/v1/nothing-here")
    assert status == 404
    assert reply["error"]["code"] == "not_found"


async def test_normalization_profile_validated(api: Api) -> None:
    bad = {"document": {"provider": "openai", "families": [{"id": 3}]}}
    status, reply = await api.call("PUT", "/v1/normalization-profiles/bad", json=bad)
    assert status == 422
    assert reply["error"]["issues"][0]["path"] == "document"


async def test_cache_settings_round_trip(api: Api) -> None:
    default = await api.ok("GET", "/v1/cache-settings")
    assert default["enabled"] is False
    updated = await api.ok("PUT", "/v1/cache-settings", json={"enabled": True, "ttl_s": 60})
    assert updated["ttl_s"] == 60
    assert (await api.ok("GET", "/v1/cache-settings"))["enabled"] is True


# --- the OpenAPI description ---------------------------------------------------------------------


async def test_openapi_lists_every_route(api: Api) -> None:
    spec = await api.ok("GET", "/openapi.json", token=None)
    assert spec["openapi"] == "3.1.0"
    described = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    registered = {
        (route.method, route.resource.canonical)
        for route in api.running.runner.app.router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        # The dashboard's HTML pages and static files are not part of the API.
        and not route.resource.canonical.startswith("/dashboard")
    }
    assert registered == described


async def test_openapi_marks_secrets_write_only(api: Api) -> None:
    spec = await api.ok("GET", "/openapi.json", token=None)
    credentials = spec["components"]["schemas"]["ProviderCredentials-Input"]["properties"]
    api_key = credentials["api_key"]["anyOf"][0]
    assert api_key["writeOnly"] is True


@pytest.mark.parametrize("api_backend", ["postgresql"])
async def test_api_on_postgresql(api: Api) -> None:
    created = await api.ok("PUT", "/v1/providers/oa", json=provider_body())
    assert created["credentials_set"] == ["api_key"]
    enrolled = await api.enroll("edge", "onprem")
    assert enrolled["instance"] == "edge"
    status, _ = await api.call(
        "POST",
        "/v1/enroll",
        token=None,
        json={"token": "sf-enroll-unknown", "name": "x", "site": "onprem"},
    )
    assert status == 401
