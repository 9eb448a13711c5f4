"""Error bodies and field checks shared by the OpenAI-format simulators.

Messages and codes follow what api.openai.com returns (``invalid_type``,
``decimal_above_max_value``, ``missing_required_parameter`` and so on).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "boolean_field",
    "check_range",
    "integer_field",
    "invalid_type",
    "invalid_value",
    "json_type_name",
    "missing",
    "number_field",
    "object_field",
    "openai_error",
    "require",
    "supported_values",
]


class ApiError(Exception):
    """An error response to send: HTTP status and JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def openai_error(
    status: int,
    message: str,
    *,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> ApiError:
    error = {"message": message, "type": error_type, "param": param, "code": code}
    return ApiError(status, {"error": error})


def json_type_name(value: Any) -> str:
    """Name a JSON value's type the way OpenAI's messages do ("a string", "an array")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def supported_values(values: tuple[str, ...] | list[str]) -> str:
    """Render ``'a', 'b', and 'c'`` as OpenAI lists accepted values."""
    quoted = [f"'{value}'" for value in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def missing(param: str) -> ApiError:
    return openai_error(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def invalid_type(param: str, expected: str, value: Any) -> ApiError:
    message = (
        f"Invalid type for '{param}': expected {expected}, but got {json_type_name(value)} instead."
    )
    return openai_error(400, message, param=param, code="invalid_type")


def invalid_value(param: str, value: Any, allowed: tuple[str, ...]) -> ApiError:
    message = f"Invalid value: '{value}'. Supported values are: {supported_values(allowed)}."
    return openai_error(400, message, param=param, code="invalid_value")


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def check_range(param: str, value: float, low: float | None, high: float | None, kind: str) -> None:
    if low is not None and value < low:
        message = (
            f"Invalid '{param}': {kind} below minimum value. Expected a value >= "
            f"{_format_number(low)}, but got {_format_number(value)} instead."
        )
        raise openai_error(400, message, param=param, code=f"{kind}_below_min_value")
    if high is not None and value > high:
        message = (
            f"Invalid '{param}': {kind} above maximum value. Expected a value <= "
            f"{_format_number(high)}, but got {_format_number(value)} instead."
        )
        raise openai_error(400, message, param=param, code=f"{kind}_above_max_value")


def number_field(body: dict[str, Any], param: str, low: float, high: float) -> float | None:
    value = body.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_type(param, "a decimal", value)
    check_range(param, value, low, high, "decimal")
    return float(value)


def integer_field(
    body: dict[str, Any], param: str, low: int | None = None, high: int | None = None
) -> int | None:
    value = body.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_type(param, "an integer", value)
    check_range(param, value, low, high, "integer")
    return value


def boolean_field(body: dict[str, Any], param: str, default: bool) -> bool:
    value = body.get(param)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid_type(param, "a boolean", value)
    return value


def object_field(body: dict[str, Any], param: str) -> dict[str, Any] | None:
    value = body.get(param)
    if value is not None and not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    return value


def require(container: dict[str, Any], key: str, path: str, kind: type, expected: str) -> Any:
    """Return ``container[key]``, raising OpenAI's missing or invalid-type error."""
    value = container.get(key)
    if value is None:
        raise missing(path)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise invalid_type(path, expected, value)
    return value
