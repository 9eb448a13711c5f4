"""The PARSED_FIELDS of each request dialect are exactly the top-level fields its
``parse_request`` reads, so no field is reported as dropped while it is translated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from smartflow.core.types import ChatRequest
from smartflow.dialects.anthropic import requests as anthropic_requests
from smartflow.dialects.openai import requests as openai_requests


class _ReadRecorder(dict[str, Any]):
    """A request body that records each top-level key looked up in it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return super().__contains__(key)


_MINIMAL_BODIES: list[
    tuple[str, Callable[[dict[str, Any]], ChatRequest], frozenset[str], dict[str, Any]]
] = [
    (
        "openai",
        openai_requests.parse_request,
        openai_requests.PARSED_FIELDS,
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    ),
    (
        "anthropic",
        anthropic_requests.parse_request,
        anthropic_requests.PARSED_FIELDS,
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    ),
]


@pytest.mark.parametrize(
    ("parse", "parsed_fields", "body"),
    [case[1:] for case in _MINIMAL_BODIES],
    ids=[case[0] for case in _MINIMAL_BODIES],
)
def test_parsed_fields_match_parser(
    parse: Callable[[dict[str, Any]], ChatRequest],
    parsed_fields: frozenset[str],
    body: dict[str, Any],
) -> None:
    # A minimal body makes the parser look up every optional field and find none.
    recorder = _ReadRecorder(body)
    parse(recorder)
    assert recorder.read - parsed_fields == set(), "read but missing from PARSED_FIELDS"
    assert parsed_fields - recorder.read == set(), "in PARSED_FIELDS but never read"
