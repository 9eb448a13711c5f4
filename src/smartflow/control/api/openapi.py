"""The OpenAPI 3.1 description, generated from the operation table and its pydantic models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from smartflow import __version__
from smartflow.control.api.routing import Operation
from smartflow.control.models import ErrorBody

__all__ = ["build_openapi"]

_REF = "#/components/schemas/{model}"

Schemas = Mapping[tuple[Any, JsonSchemaMode], Any]
"""The JSON schema of each (model, mode) pair, as ``models_json_schema`` returns them."""

_ERRORS = {
    400: "The body is missing or not JSON, or the request is not a WebSocket upgrade.",
    401: "Missing or invalid credential.",
    403: "The credential's role or scope does not allow this.",
    404: "Not found.",
    409: "Conflicts with the stored state, such as an object still in use.",
    413: "The body is too large.",
    422: "The body or query is invalid; ``issues`` lists each problem.",
}


def _model_keys(operations: Sequence[Operation]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    keys: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for operation in operations:
        if operation.body is not None:
            keys.append((operation.body, "validation"))
        if operation.response is not None:
            keys.append((operation.response, "serialization"))
        if operation.query is not None:
            keys.append((operation.query, "validation"))
    return list(dict.fromkeys(keys))


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _parameters(operation: Operation, schemas: Schemas) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": dict(schema)}
        for name, schema in operation.path_params.items()
    ]
    if operation.query is not None:
        properties = operation.query.model_json_schema(ref_template=_REF)["properties"]
        for name, field in operation.query.model_fields.items():
            key = field.alias or name
            parameters.append(
                {
                    "name": key,
                    "in": "query",
                    "required": field.is_required(),
                    "schema": properties[key],
                }
            )
    return parameters


def _responses(operation: Operation, schemas: Schemas) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if operation.websocket:
        responses["101"] = {"description": "Switching Protocols: the stream is open."}
    elif operation.response is None:
        responses[str(operation.status)] = {"description": "Done."}
    else:
        body = _json(schemas[(operation.response, "serialization")])
        if operation.csv:
            body["text/csv"] = {"schema": {"type": "string"}}
        responses[str(operation.status)] = {"description": "Success.", "content": body}
        for status, text in operation.also.items():
            responses[str(status)] = {"description": text, "content": body}
    statuses = set(operation.errors)
    if operation.body is not None:
        statuses |= {400, 413, 422}
    if operation.query is not None:
        statuses.add(422)
    if operation.websocket:
        statuses.add(400)
    if operation.auth != "none":
        statuses.add(401)
    if operation.auth == "admin" and operation.role != "viewer":
        statuses.add(403)
    error = _json(schemas[(ErrorBody, "serialization")])
    for status in sorted(statuses):
        responses[str(status)] = {"description": _ERRORS[status], "content": error}
    return responses


def _operation(operation: Operation, schemas: Schemas) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
    }
    if operation.description:
        entry["description"] = operation.description
    if operation.auth == "admin":
        entry["description"] = (
            entry.get("description", "") + f" Needs an admin token with role {operation.role} "
            "or higher."
        ).strip()
    parameters = _parameters(operation, schemas)
    if parameters:
        entry["parameters"] = parameters
    if operation.body is not None:
        schema = schemas[(operation.body, "validation")]
        entry["requestBody"] = {"required": True, "content": _json(schema)}
    entry["responses"] = _responses(operation, schemas)
    security: dict[str, list[dict[str, list[str]]]] = {
        "none": [],
        "admin": [{"adminToken": []}],
        "instance": [{"instanceCredential": []}],
    }
    entry["security"] = security[operation.auth]
    return entry


def build_openapi(operations: Sequence[Operation]) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document for ``operations`` (plus ``GET /openapi.json``)."""
    schemas, definitions = models_json_schema(_model_keys(operations), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {
        "/openapi.json": {
            "get": {
                "operationId": "getOpenAPI",
                "summary": "Get this OpenAPI description",
                "tags": ["system"],
                "security": [],
                "responses": {
                    "200": {"description": "Success.", "content": _json({"type": "object"})}
                },
            }
        }
    }
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(
            operation, schemas
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Smartflow control plane",
            "version": __version__,
            "description": "Central store of policies, providers, keys and settings, pushed to "
            "every enrolled gateway instance over GET /v1/sync.",
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer"},
                "instanceCredential": {"type": "http", "scheme": "bearer"},
            },
        },
    }
