"""Operations: one declaration per endpoint, from which both the aiohttp route (with its
authentication, role check and body parsing) and the OpenAPI description are made."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from smartflow.control.api.session import session_token
from smartflow.control.services.context import Actor, Role, role_allows
from smartflow.control.services.errors import Issue, ObjectInvalid
from smartflow.control.services.plane import ControlPlane
from smartflow.core.errors import AuthenticationError, InvalidRequest, PermissionDenied

__all__ = ["PLANE_KEY", "Call", "Operation", "Reply", "add_operations", "json_response"]

logger = logging.getLogger(__name__)

PLANE_KEY: web.AppKey[ControlPlane] = web.AppKey("control_plane", ControlPlane)

AuthKind = Literal["none", "admin", "instance"]


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler result with a status other than the operation's default."""

    body: BaseModel | None
    status: int


@dataclass(frozen=True, slots=True)
class Call:
    """The input of a handler: request, services, caller, and the parsed body and query."""

    request: web.Request
    plane: ControlPlane
    actor: Actor | None
    body: Any
    query: Any

    def param(self, name: str) -> str:
        return self.request.match_info[name]

    @property
    def signed_in(self) -> Actor:
        if self.actor is None:
            raise RuntimeError("operation declared without authentication")
        return self.actor


Handler = Callable[[Call], Awaitable[BaseModel | Reply | web.StreamResponse | None]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    handler: Handler
    auth: AuthKind = "admin"
    role: Role = "viewer"
    """The minimum role an admin token needs (``auth="admin"`` only)."""
    body: type[BaseModel] | None = None
    parse_body: bool = True
    """False: the handler validates the JSON body itself and gets it as plain data."""
    response: type[BaseModel] | None = None
    status: int = 200
    also: Mapping[int, str] = field(default_factory=dict)
    """Other success statuses with the same body, and what they mean."""
    query: type[BaseModel] | None = None
    path_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Path parameter name to its JSON schema."""
    errors: Sequence[int] = ()
    """Error statuses besides those implied by authentication and the body."""
    description: str = ""
    websocket: bool = False
    csv: bool = False
    """The handler may also return ``text/csv`` when the query requests it."""


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def _authenticate(request: web.Request, operation: Operation) -> Actor | None:
    if operation.auth != "admin":
        return None
    token = _bearer(request)
    if token is None and request.method == "GET":
        # The dashboard's session cookie authenticates reads only, so a forged
        # cross-site request could change nothing even if a browser sent the cookie.
        token = session_token(request)
    if token is None:
        raise AuthenticationError("missing admin token: send 'Authorization: Bearer <token>'")
    actor = await request.app[PLANE_KEY].access.authenticate_admin(token)
    if not role_allows(actor.role or "", operation.role):
        raise PermissionDenied(
            f"admin token {actor.name!r} has role {actor.role}; this operation needs "
            f"{operation.role} or higher"
        )
    return actor


def _validation_issues(exc: ValidationError) -> list[Issue]:
    issues = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"])
        issues.append(Issue(path, error["msg"].removeprefix("Value error, ")))
    return issues


async def _read_body(request: web.Request, operation: Operation) -> Any:
    if operation.body is None:
        return None
    raw = await request.read()
    if not raw.strip():
        raise InvalidRequest("missing request body: send a JSON object")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not operation.parse_body:
        return data
    try:
        return operation.body.model_validate(data)
    except ValidationError as exc:
        raise ObjectInvalid(_validation_issues(exc)) from None


def _read_query(request: web.Request, operation: Operation) -> Any:
    if operation.query is None:
        return None
    try:
        return operation.query.model_validate(dict(request.query))
    except ValidationError as exc:
        raise ObjectInvalid(_validation_issues(exc)) from None


def _render(result: BaseModel | Reply | None, operation: Operation) -> web.Response:
    status = operation.status
    if isinstance(result, Reply):
        status = result.status
        result = result.body
    if result is None:
        return web.Response(status=204 if status == 200 else status)
    return json_response(result.model_dump(mode="json", by_alias=True), status)


def _endpoint(operation: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        actor = await _authenticate(request, operation)
        call = Call(
            request=request,
            plane=request.app[PLANE_KEY],
            actor=actor,
            body=await _read_body(request, operation),
            query=_read_query(request, operation),
        )
        result = await operation.handler(call)
        if isinstance(result, web.StreamResponse):
            return result
        return _render(result, operation)

    endpoint.__name__ = operation.operation_id
    return endpoint


def add_operations(app: web.Application, operations: Sequence[Operation]) -> None:
    for operation in operations:
        app.router.add_route(operation.method, operation.path, _endpoint(operation))
