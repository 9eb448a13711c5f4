"""Render every failure as ``{"error": {"code", "message", "issues"?}}`` with its status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from smartflow.control.api.routing import json_response
from smartflow.control.services.errors import ObjectInvalid
from smartflow.control.store.crypto import SecretDecryptionError
from smartflow.core.errors import SmartflowError

__all__ = ["error_body", "error_middleware"]

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def error_body(code: str, message: str, issues: list[dict[str, str]] | None = None) -> Any:
    error: dict[str, Any] = {"code": code, "message": message}
    if issues is not None:
        error["issues"] = issues
    return {"error": error}


def _from_smartflow(exc: SmartflowError, request: web.Request) -> web.Response:
    logger.log(
        exc.log_level, "%s %s failed: %s %s", request.method, request.path, exc.status, exc.message
    )
    issues = [issue.to_dict() for issue in exc.issues] if isinstance(exc, ObjectInvalid) else None
    response = json_response(error_body(exc.code, exc.message, issues), exc.status)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _from_http(exc: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(exc.status, "http_error")
    message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    if exc.status == 404:
        message = "no such endpoint; the API is described at /openapi.json"
    response = json_response(error_body(code, message), exc.status)
    for header in ("Allow",):
        if header in exc.headers:
            response.headers[header] = exc.headers[header]
    return response


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except SmartflowError as exc:
        return _from_smartflow(exc, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http(exc)
    except SecretDecryptionError as exc:
        logger.error("%s %s failed: %s", request.method, request.path, exc)
        return json_response(error_body("secret_key_mismatch", str(exc)), 500)
    except Exception:
        logger.exception("%s %s failed with an unexpected error", request.method, request.path)
        return json_response(
            error_body("internal_error", "internal error; the control plane log has details"),
            500,
        )
