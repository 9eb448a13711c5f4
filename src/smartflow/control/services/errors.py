"""Errors of the control-plane services, with the HTTP status the API maps them to."""

from __future__ import annotations

from collections.abc import Sequence

from smartflow.core.errors import ClientError

__all__ = ["Conflict", "Issue", "ObjectInvalid"]


class Conflict(ClientError):
    """The change conflicts with the stored state, such as a reference to the object."""

    status = 409
    code = "conflict"


class Issue:
    """One problem in a request body: where it is and what is wrong."""

    __slots__ = ("document", "message", "path")

    def __init__(self, path: str, message: str, document: str | None = None) -> None:
        self.path = path
        self.message = message
        self.document = document

    def to_dict(self) -> dict[str, str]:
        data = {"path": self.path, "message": self.message}
        if self.document is not None:
            data["document"] = self.document
        return data


class ObjectInvalid(ClientError):
    """A request body that is well-formed JSON but not a valid object; ``issues`` lists why."""

    status = 422
    code = "invalid_object"

    def __init__(self, issues: Sequence[Issue]) -> None:
        if not issues:
            raise ValueError("ObjectInvalid needs at least one issue")
        self.issues = tuple(issues)
        first = self.issues[0]
        where = f"{first.path}: " if first.path else ""
        more = f" (and {len(self.issues) - 1} more)" if len(self.issues) > 1 else ""
        super().__init__(f"invalid object: {where}{first.message}{more}", param=first.path or None)

    @classmethod
    def one(cls, path: str, message: str) -> ObjectInvalid:
        return cls([Issue(path, message)])
