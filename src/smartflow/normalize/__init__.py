"""Normalisation: requests keep their meaning when they move between providers.

``normalize`` adapts a canonical ``ChatRequest`` to one target model family, driven by
capability profiles (``profiles/*.yaml``), and returns every change with its reason.
``report_header`` renders the changes for a response header and ``changes_to_dicts``
for the usage event.
"""

from __future__ import annotations

from smartflow.normalize.compiled import CompiledFamily, ProfileSet
from smartflow.normalize.engine import PINNABLE, Normalized, normalize, normalize_detailed
from smartflow.normalize.loader import default_profiles, load_profiles, set_default_profiles
from smartflow.normalize.policy import DEFAULT_POLICY, Policy
from smartflow.normalize.report import Change, changes_to_dicts, report_header
from smartflow.normalize.rules import EFFORTS, RULES

__all__ = [
    "DEFAULT_POLICY",
    "EFFORTS",
    "PINNABLE",
    "RULES",
    "Change",
    "CompiledFamily",
    "Normalized",
    "Policy",
    "ProfileSet",
    "changes_to_dicts",
    "default_profiles",
    "load_profiles",
    "normalize",
    "normalize_detailed",
    "report_header",
    "set_default_profiles",
]
