"""The actor of a change: an admin token, an instance, an enrollment or the system."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ROLE_RANK", "SYSTEM", "Actor", "ActorKind", "Role", "role_allows"]

Role = Literal["viewer", "policy_editor", "admin"]
ActorKind = Literal["admin_token", "instance", "enrollment", "system"]

ROLE_RANK: dict[str, int] = {"viewer": 0, "policy_editor": 1, "admin": 2}
"""Each role may do everything the roles of lower rank may do."""


def role_allows(role: str, required: str) -> bool:
    return ROLE_RANK.get(role, -1) >= ROLE_RANK[required]


@dataclass(frozen=True, slots=True)
class Actor:
    name: str
    kind: ActorKind
    role: Role | None = None


SYSTEM = Actor(name="system", kind="system")
