"""Configuration parsing: values that YAML reads in another type than the schema's."""

from __future__ import annotations

import yaml

from smartflow.config.schema import parse_config

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
