"""Configuration parsing: values that YAML reads in another type than the schema's."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from smartflow.config.schema import parse_config
from smartflow.core.errors import ConfigError

CONFIG = """
providers:
  azure: {type: azure_openai, base_url: "http://127.0.0.1:9", api_key_env: AZ_KEY,
          api_version: 2024-10-21}
  claude: {type: anthropic, api_key_env: AN_KEY, anthropic_version: 2023-06-01}
models: {}
"""


def test_unquoted_version_dates_read_as_text() -> None:
    config = parse_config(yaml.safe_load(CONFIG), "test config")
    assert config.providers["azure"].api_version == "2024-10-21"
    assert config.providers["claude"].anthropic_version == "2023-06-01"


@pytest.mark.parametrize(
    ("data", "enabled"),
    [
        ({}, False),
        ({"usage": {"shipping": {"url": "http://127.0.0.1:7778/v1/events"}}}, True),
        ({"control_plane": {"url": "http://127.0.0.1:7778"}}, True),
        ({"control_plane": {"url": "http://127.0.0.1:7778"}, "usage": {"enabled": False}}, False),
        ({"usage": {"enabled": True}}, True),
    ],
    ids=["standalone", "shipping", "linked", "linked-off", "standalone-on"],
)
def test_usage_default_follows_control_plane(data: dict[str, Any], enabled: bool) -> None:
    assert parse_config(data).usage.enabled is enabled


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("idle_wait_s", float("inf")),
        ("fill_wait_s", float("nan")),
        ("backoff_max_s", float("inf")),
        ("backoff_max_s", 86_400),
    ],
)
def test_shipping_waits_are_finite(field: str, value: float) -> None:
    shipping = {"url": "http://127.0.0.1:7778/v1/events", field: value}
    with pytest.raises(ConfigError) as raised:
        parse_config({"usage": {"shipping": shipping}})
    assert f"usage.shipping.{field}" in str(raised.value)
