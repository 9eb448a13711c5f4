"""Error taxonomy shared by every dialect and provider.

Each class carries the HTTP status, a stable code, whether a retry may succeed, and
the log level at which the gateway records it. Ingress dialects render these into
their own error bodies; provider adapters map upstream failures into them.
"""

from __future__ import annotations

import logging

__all__ = [
    "AuthenticationError",
    "ClientError",
    "ConfigError",
    "InternalError",
    "InvalidRequest",
    "MalformedUpstreamResponse",
    "NotFound",
    "PermissionDenied",
    "PolicyViolation",
    "RateLimited",
    "RequestTimeout",
    "RequestTooLarge",
    "SmartflowError",
    "UpstreamError",
    "UpstreamHTTPError",
    "UpstreamOverloaded",
    "UpstreamRateLimited",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "upstream_error",
]


class SmartflowError(Exception):
    """Root of every error the gateway reports to a caller."""

    status: int = 500
    code: str = "internal_error"
    retryable: bool = False
    log_level: int = logging.ERROR
    close_connection: bool = False
    """Whether the caller's connection cannot carry another request after this error."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# --- the caller's fault -------------------------------------------------------------


class ClientError(SmartflowError):
    status = 400
    code = "invalid_request"
    log_level = logging.INFO


class InvalidRequest(ClientError):
    """A request body that is not valid JSON or breaks the dialect's schema."""


class AuthenticationError(ClientError):
    status = 401
    code = "authentication_failed"


class PermissionDenied(ClientError):
    status = 403
    code = "permission_denied"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class RequestTooLarge(ClientError):
    status = 413
    code = "request_too_large"


class PolicyViolation(ClientError):
    status = 400
    code = "policy_violation"


class RateLimited(ClientError):
    status = 429
    code = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: float | None = None, param: str | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


# --- the upstream provider's fault --------------------------------------------------


class UpstreamError(SmartflowError):
    """A failure of the provider call; ``provider`` names the deployment's provider."""

    status = 502
    code = "upstream_error"
    log_level = logging.WARNING

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        upstream_status: int | None = None,
        retry_after: float | None = None,
        param: str | None = None,
        upstream_type: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.provider = provider
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.upstream_type = upstream_type


class UpstreamHTTPError(UpstreamError):
    """The provider responded with an error status.

    A 4xx keeps its status for the caller and is not retried; a 5xx becomes 502 and
    may be retried on the next deployment.
    """

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int,
        provider: str = "",
        retry_after: float | None = None,
        param: str | None = None,
        upstream_type: str | None = None,
    ) -> None:
        super().__init__(
            message,
            provider=provider,
            upstream_status=upstream_status,
            retry_after=retry_after,
            param=param,
            upstream_type=upstream_type,
        )
        if upstream_status in (401, 403):
            # The gateway's own provider credential failed: an operator problem, not
            # the caller's, so the caller gets a gateway error rather than a 401.
            self.status = 502
            self.code = "upstream_authentication_failed"
            self.message = (
                f"{provider} rejected the gateway's credential (HTTP {upstream_status}): "
                f"{message} Check the provider key configured for this gateway."
            )
            self.args = (self.message,)
        elif 400 <= upstream_status < 500:
            self.status = upstream_status
            self.log_level = logging.INFO
        else:
            self.status = 502
            self.retryable = True


class UpstreamRateLimited(UpstreamError):
    status = 429
    code = "upstream_rate_limited"
    retryable = True


class UpstreamOverloaded(UpstreamError):
    status = 529
    code = "upstream_overloaded"
    retryable = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    retryable = True


class UpstreamUnavailable(UpstreamError):
    """The connection failed or broke before a response arrived."""

    status = 502
    code = "upstream_unavailable"
    retryable = True


class MalformedUpstreamResponse(UpstreamError):
    status = 502
    code = "malformed_upstream_response"


def upstream_error(
    status: int,
    message: str,
    *,
    provider: str,
    retry_after: float | None = None,
    param: str | None = None,
    upstream_type: str | None = None,
) -> UpstreamError:
    """Build the error class that matches an upstream HTTP status."""
    cls: type[UpstreamError]
    if status == 429:
        cls = UpstreamRateLimited
    elif status == 529:
        cls = UpstreamOverloaded
    elif status in (408, 504):
        cls = UpstreamTimeout
    else:
        return UpstreamHTTPError(
            message,
            upstream_status=status,
            provider=provider,
            retry_after=retry_after,
            param=param,
            upstream_type=upstream_type,
        )
    return cls(
        message,
        provider=provider,
        upstream_status=status,
        retry_after=retry_after,
        param=param,
        upstream_type=upstream_type,
    )


# --- our own fault ------------------------------------------------------------------


class InternalError(SmartflowError):
    pass


class ConfigError(InternalError):
    code = "config_error"
