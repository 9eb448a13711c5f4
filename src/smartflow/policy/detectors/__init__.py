"""PII and secret detectors and the detector set that runs them."""

from __future__ import annotations

from smartflow.policy.detectors._base import Detector, Finding, ScanContext
from smartflow.policy.detectors.registry import (
    BUILTIN_ENTITIES,
    ENTITY_GROUPS,
    PII_ENTITIES,
    DetectorSet,
)
from smartflow.policy.detectors.secrets import SECRET_ENTITIES

__all__ = [
    "BUILTIN_ENTITIES",
    "ENTITY_GROUPS",
    "PII_ENTITIES",
    "SECRET_ENTITIES",
    "Detector",
    "DetectorSet",
    "Finding",
    "ScanContext",
]
