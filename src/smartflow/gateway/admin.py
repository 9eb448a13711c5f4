"""Admin API for policies: list, validate, apply, diff and roll back policy versions."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from smartflow.config.schema import AdminToken
from smartflow.core.errors import (
    AuthenticationError,
    ClientError,
    InternalError,
    InvalidRequest,
    PermissionDenied,
    RequestTooLarge,
    SmartflowError,
)
from smartflow.policy.documents import PolicyDocument, PolicyValidationError, parse_documents
from smartflow.policy.store import PolicyStore, PolicyVersion

__all__ = ["MAX_POLICY_BYTES", "WRITE_ROLES", "add_admin_routes"]

logger = logging.getLogger(__name__)

MAX_POLICY_BYTES = 8 * 1024 * 1024
"""Largest YAML body accepted by validate and apply; larger ones get 413."""
WRITE_ROLES = frozenset({"admin", "policy_editor"})

Handler = Callable[[web.Request], Awaitable[web.Response]]


@dataclass(frozen=True, slots=True)
class _Principal:
    name: str
    role: str


class _RejectionLog:
    """Log rejected admin credentials at most once per ``interval_s``, with a count."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._last = float("-inf")
        self._suppressed = 0

    def record(self, reason: str, remote: str | None) -> None:
        now = time.monotonic()
        if now - self._last < self._interval_s:
            self._suppressed += 1
            return
        logger.warning(
            "admin request rejected: %s (from %s; %d more rejections not logged)",
            reason,
            remote or "unknown address",
            self._suppressed,
        )
        self._last = now
        self._suppressed = 0


def _error_body(error: SmartflowError) -> dict[str, Any]:
    body: dict[str, Any] = {"message": error.message, "code": error.code}
    if isinstance(error, PolicyValidationError):
        body["document"] = error.document
        body["path"] = error.path
        body["issues"] = [issue.model_dump() for issue in error.issues]
    return {"error": body}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _version_detail(version: PolicyVersion, active: int | None) -> dict[str, Any]:
    detail = version.summary()
    detail["active"] = version.version == active
    detail["yaml"] = version.to_yaml()
    detail["content"] = [document.to_dict() for document in version.documents]
    return detail


class PolicyAdmin:
    """The admin API handlers over one policy store."""

    def __init__(self, store: PolicyStore[Any], tokens: Sequence[AdminToken]) -> None:
        self.store = store
        self._tokens = {token.sha256: _Principal(token.name, token.role) for token in tokens}
        self._rejections = _RejectionLog()

    def add_routes(self, app: web.Application) -> None:
        routes = (
            ("GET", "/admin/policies", self.list_versions, False),
            ("POST", "/admin/policies", self.apply, True),
            ("GET", "/admin/policies/active", self.active, False),
            ("POST", "/admin/policies/validate", self.validate, False),
            ("GET", "/admin/policies/diff", self.diff, False),
            ("POST", "/admin/policies/rollback", self.rollback, True),
            ("GET", r"/admin/policies/{version:\d+}", self.get_version, False),
        )
        for method, path, handler, write in routes:
            app.router.add_route(method, path, self._guard(handler, write=write))

    # --- authentication and errors ---------------------------------------------------

    def _guard(
        self, handler: Callable[[web.Request, _Principal], Awaitable[web.Response]], *, write: bool
    ) -> Handler:
        async def guarded(request: web.Request) -> web.Response:
            try:
                principal = self._authenticate(request, write=write)
                return await handler(request, principal)
            except AuthenticationError as exc:
                # Logged, rate-limited, by _authenticate.
                return _json(_error_body(exc), exc.status)
            except SmartflowError as exc:
                logger.log(
                    exc.log_level,
                    "admin %s %s failed with %d (%s): %s",
                    request.method,
                    request.path,
                    exc.status,
                    exc.code,
                    exc,
                )
                return _json(_error_body(exc), exc.status)
            except Exception as exc:
                logger.exception("admin %s %s failed", request.method, request.path)
                error = InternalError(f"The admin request failed: {type(exc).__name__}: {exc}")
                return _json(_error_body(error), error.status)

        return guarded

    def _authenticate(self, request: web.Request, *, write: bool) -> _Principal:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self._rejections.record("no bearer token", request.remote)
            raise AuthenticationError(
                "Missing admin token. Send 'Authorization: Bearer <admin token>'; create one "
                "with `smartflow admin token new` and add its sha256 to admin_tokens."
            )
        principal = self._tokens.get(hashlib.sha256(token.encode("utf-8")).hexdigest())
        if principal is None:
            self._rejections.record("unknown token", request.remote)
            hint = "" if self._tokens else " This gateway has no admin_tokens configured."
            raise AuthenticationError(
                f"Invalid admin token: no entry in admin_tokens matches it.{hint}"
            )
        if write and principal.role not in WRITE_ROLES:
            raise PermissionDenied(
                f"Admin token {principal.name!r} has the role {principal.role!r}, which may only "
                "read and validate policies; changing them needs the role admin or "
                "policy_editor."
            )
        return principal

    # --- handlers --------------------------------------------------------------------

    async def list_versions(self, request: web.Request, principal: _Principal) -> web.Response:
        active = self.store.active
        return _json(
            {
                "active": active.version.version if active is not None else None,
                "versions": [version.summary() for version in self.store.list_versions()],
            }
        )

    async def active(self, request: web.Request, principal: _Principal) -> web.Response:
        active = self.store.active
        if active is None:
            raise _NoVersion("no policy version has been applied yet")
        return _json(_version_detail(active.version, active.version.version))

    async def get_version(self, request: web.Request, principal: _Principal) -> web.Response:
        version = self.store.get(int(request.match_info["version"]))
        active = self.store.active
        return _json(_version_detail(version, active.version.version if active else None))

    async def validate(self, request: web.Request, principal: _Principal) -> web.Response:
        documents = await self._read_documents(request)
        await asyncio.to_thread(self.store.check, documents)
        return _json({"valid": True, "documents": [document.name for document in documents]})

    async def apply(self, request: web.Request, principal: _Principal) -> web.Response:
        documents = await self._read_documents(request)
        version = await asyncio.to_thread(self.store.apply, documents, principal.name)
        return _json(version.summary(), status=201)

    async def diff(self, request: web.Request, principal: _Principal) -> web.Response:
        old = _version_param(request, "from")
        new = _version_param(request, "to")
        text = self.store.diff(old, new)
        return _json({"from": old, "to": new, "diff": text})

    async def rollback(self, request: web.Request, principal: _Principal) -> web.Response:
        body = await _read_json_object(request)
        target = body.get("version")
        if not isinstance(target, int) or isinstance(target, bool) or target < 1:
            raise InvalidRequest(
                'Send {"version": N}, where N is an existing version number (1 or higher).',
                param="version",
            )
        version = await asyncio.to_thread(self.store.rollback, target, principal.name)
        return _json(version.summary(), status=201)

    async def _read_documents(self, request: web.Request) -> list[PolicyDocument]:
        if request.content_length is not None and request.content_length > MAX_POLICY_BYTES:
            raise _too_large()
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise _too_large() from None
        if len(raw) > MAX_POLICY_BYTES:
            raise _too_large()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"The request body is not UTF-8 text: {exc}") from None
        return await asyncio.to_thread(parse_documents, text)


class _NoVersion(ClientError):
    status = 404
    code = "not_found"


def _too_large() -> RequestTooLarge:
    return RequestTooLarge(
        f"The policy body is larger than {MAX_POLICY_BYTES} bytes; split the documents or "
        "shorten the word lists."
    )


def _version_param(request: web.Request, name: str) -> int:
    value = request.query.get(name, "")
    if not value.isdigit() or int(value) < 1:
        raise InvalidRequest(
            f"Query parameter {name!r} must be a version number (1 or higher), got {value[:20]!r}.",
            param=name,
        )
    return int(value)


async def _read_json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def add_admin_routes(
    app: web.Application, store: PolicyStore[Any], tokens: Sequence[AdminToken]
) -> None:
    """Add the ``/admin/policies`` routes, authenticated with the configured admin tokens.

    Admin and policy_editor tokens may change policies; viewer tokens may list, read,
    diff and validate them.
    """
    if not tokens:
        logger.info("no admin_tokens are configured: every admin API request will get 401")
    PolicyAdmin(store, tokens).add_routes(app)
