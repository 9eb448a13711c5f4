"""Build provider adapters from configuration, resolving their credentials."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from smartflow.config.schema import ProviderSettings
from smartflow.core.errors import ConfigError
from smartflow.providers.anthropic import AnthropicProvider
from smartflow.providers.base import Provider, Secret
from smartflow.providers.bedrock import BedrockProvider, load_aws_credentials
from smartflow.providers.cohere import CohereProvider
from smartflow.providers.gemini import GeminiProvider, VertexGeminiProvider
from smartflow.providers.openai import AzureOpenAIProvider, OpenAIProvider

__all__ = ["build_provider", "resolve_credential"]

logger = logging.getLogger(__name__)

_DEFAULT_ENV = {
    "openai": "OPENAI_API_KEY",
    "azure_openai": "AZURE_OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "vertex_gemini": "VERTEX_ACCESS_TOKEN",  # our own name: a static OAuth access token
    "cohere": "CO_API_KEY",  # the variable the Cohere SDK reads
}


def resolve_credential(
    name: str, settings: ProviderSettings, environ: Mapping[str, str] | None = None
) -> Secret:
    """Read a provider's key from its environment variable or file.

    Raises ConfigError naming the variable or file when the key is missing.
    """
    env = os.environ if environ is None else environ
    if settings.api_key_file:
        path = Path(settings.api_key_file)
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"providers.{name}.api_key_file: cannot read {path}: {exc.strerror}"
            ) from exc
        if not value:
            raise ConfigError(f"providers.{name}.api_key_file: {path} is empty")
        return Secret(value)
    variable = settings.api_key_env or _DEFAULT_ENV[settings.type]
    value = env.get(variable, "").strip()
    if not value:
        raise ConfigError(
            f"providers.{name}: the environment variable {variable} is not set; set it to the "
            "provider's API key, or name another variable in 'api_key_env'"
        )
    return Secret(value)


def build_provider(
    name: str, settings: ProviderSettings, environ: Mapping[str, str] | None = None
) -> Provider:
    if settings.type == "bedrock":
        return _build_bedrock(name, settings, environ)
    if settings.type == "vertex_gemini":
        assert settings.vertex_project is not None and settings.vertex_location is not None
        if settings.credentials_file:
            return VertexGeminiProvider(
                name,
                project=settings.vertex_project,
                location=settings.vertex_location,
                credentials_file=settings.credentials_file,
                base_url=settings.base_url,
            )
        return VertexGeminiProvider(
            name,
            project=settings.vertex_project,
            location=settings.vertex_location,
            access_token=resolve_credential(name, settings, environ),
            base_url=settings.base_url,
        )
    api_key = resolve_credential(name, settings, environ)
    if settings.type == "gemini":
        return GeminiProvider(name, api_key=api_key, base_url=settings.base_url)
    if settings.type == "cohere":
        return CohereProvider(name, api_key=api_key, base_url=settings.base_url)
    if settings.type == "openai":
        return OpenAIProvider(name, api_key=api_key, base_url=settings.base_url)
    if settings.type == "azure_openai":
        assert settings.base_url is not None and settings.api_version is not None
        return AzureOpenAIProvider(
            name, api_key=api_key, base_url=settings.base_url, api_version=settings.api_version
        )
    return AnthropicProvider(
        name,
        api_key=api_key,
        base_url=settings.base_url,
        anthropic_version=settings.anthropic_version,
    )


def _build_bedrock(
    name: str, settings: ProviderSettings, environ: Mapping[str, str] | None
) -> BedrockProvider:
    assert settings.region is not None
    named = {
        "access_key": settings.aws_access_key_id_env,
        "secret_key": settings.aws_secret_access_key_env,
        "token": settings.aws_session_token_env,
    }
    credentials = load_aws_credentials(
        name,
        environ=environ,
        profile=settings.aws_profile,
        credentials_file=settings.aws_credentials_file,
        env_names={key: value for key, value in named.items() if value} or None,
    )
    return BedrockProvider(
        name,
        region=settings.region,
        credentials=credentials,
        endpoint_url=settings.base_url,
        api=settings.api,
    )
