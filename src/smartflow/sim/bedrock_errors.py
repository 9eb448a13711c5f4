"""Bedrock's error types: HTTP status, default message and the error raised inside handlers."""

from __future__ import annotations

__all__ = [
    "ERROR_STATUS",
    "ERROR_TYPE_BY_STATUS",
    "STREAM_EXCEPTION_TYPES",
    "BedrockError",
    "validation_error",
]

# Status of each modelled bedrock-runtime exception (botocore service model 2023-09-30).
ERROR_STATUS: dict[str, int] = {
    "ValidationException": 400,
    "ServiceQuotaExceededException": 400,
    "SerializationException": 400,
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}

# The exception a bare status maps to when a fault names only the status.
ERROR_TYPE_BY_STATUS: dict[int, str] = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}

# Exception events a ConverseStream or InvokeModelWithResponseStream body may carry.
STREAM_EXCEPTION_TYPES = frozenset(
    {
        "internalServerException",
        "modelStreamErrorException",
        "validationException",
        "throttlingException",
        "serviceUnavailableException",
        "modelTimeoutException",
    }
)


class BedrockError(Exception):
    """An error response in Bedrock's shape: ``x-amzn-ErrorType`` plus ``{"message": ...}``."""

    def __init__(self, error_type: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.status = status if status is not None else ERROR_STATUS.get(error_type, 400)


def validation_error(message: str) -> BedrockError:
    return BedrockError("ValidationException", message)
