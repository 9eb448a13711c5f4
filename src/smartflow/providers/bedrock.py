"""Amazon Bedrock runtime adapter: Converse, or InvokeModel with Claude's body, signed with SigV4.

Credentials come only from an explicit ``Credentials`` object, environment variables or
a shared credentials file, through botocore's own providers. The chain is built here,
so botocore's default chain, with its instance-metadata and container lookups, is
never consulted.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import (  # type: ignore[import-untyped]
    CredentialProvider,
    CredentialResolver,
    Credentials,
    EnvProvider,
    SharedCredentialProvider,
)
from botocore.exceptions import BotoCoreError  # type: ignore[import-untyped]

from smartflow.core.errors import ConfigError, InternalError, UpstreamError
from smartflow.core.types import ChatRequest, ChatResponse
from smartflow.dialects.anthropic import responses as anthropic_responses
from smartflow.dialects.bedrock import embeddings, errors, requests, responses, streaming
from smartflow.dialects.openai.embeddings import EmbeddingBatch, EmbeddingRequest
from smartflow.providers.base import Target
from smartflow.transport.eventstream import EventStreamParser

__all__ = ["SIGNING_SERVICE", "BedrockAPI", "BedrockProvider", "load_aws_credentials"]

logger = logging.getLogger(__name__)

# Bedrock runtime signs as service "bedrock" although its host is bedrock-runtime.
SIGNING_SERVICE = "bedrock"
BedrockAPI = Literal["converse", "invoke"]

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_EVENT_STREAM = "application/vnd.amazon.eventstream"
_OPERATIONS: dict[tuple[str, bool], str] = {
    ("converse", False): "converse",
    ("converse", True): "converse-stream",
    ("invoke", False): "invoke",
    ("invoke", True): "invoke-with-response-stream",
}
# The model id of the request being sent, which Converse responses do not name.
# build_body sets it and parse_response reads it in the same asyncio task, so
# concurrent requests never see each other's value.
_REQUEST_MODEL: ContextVar[str] = ContextVar("bedrock_request_model", default="")


def _shared_credentials_file(environ: Mapping[str, str]) -> str:
    configured = environ.get("AWS_SHARED_CREDENTIALS_FILE")
    return str(Path(configured or "~/.aws/credentials").expanduser())


def _env_mapping(env_names: Mapping[str, str] | None) -> dict[str, Any] | None:
    """Build botocore's EnvProvider mapping for variables named in configuration.

    Variables not named are not read, so a configured key is never paired with the
    session token or expiry time of another credential in AWS_SESSION_TOKEN.
    """
    if not env_names:
        return None
    return {"token": [], "expiry_time": "", "account_id": "", **env_names}


def load_aws_credentials(
    name: str,
    *,
    environ: Mapping[str, str] | None = None,
    profile: str | None = None,
    credentials_file: str | None = None,
    env_names: Mapping[str, str] | None = None,
) -> Credentials:
    """Load AWS credentials from environment variables or a shared credentials file.

    Without ``profile``: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
    ``AWS_SESSION_TOKEN`` (or the variables ``env_names`` maps to botocore's
    ``access_key``, ``secret_key`` and ``token``), then the shared credentials file
    with the profile in ``AWS_PROFILE`` or ``default``. With ``profile``: only that
    profile of the shared credentials file. ``credentials_file`` overrides
    ``AWS_SHARED_CREDENTIALS_FILE`` and ``~/.aws/credentials``.
    Raises ConfigError, naming the provider, when no complete credentials are found.
    """
    env = os.environ if environ is None else environ
    path = str(Path(credentials_file).expanduser()) if credentials_file else None
    path = path or _shared_credentials_file(env)
    chain: list[CredentialProvider] = []
    if profile is None:
        chain.append(EnvProvider(environ=env, mapping=_env_mapping(env_names)))
    chain.append(SharedCredentialProvider(path, profile or env.get("AWS_PROFILE") or "default"))
    try:
        credentials = CredentialResolver(chain).load_credentials()
    except BotoCoreError as exc:
        raise ConfigError(f"providers.{name}: invalid AWS credentials: {exc}") from exc
    if credentials is None:
        where = f"profile {profile!r} of {path}" if profile else f"the environment or {path}"
        raise ConfigError(
            f"providers.{name}: no AWS credentials found in {where}. Set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or add the profile to the shared credentials file."
        )
    logger.info("provider %s: AWS credentials loaded from %s", name, credentials.method)
    return credentials


class BedrockProvider:
    """One AWS account and region of the Bedrock runtime.

    ``api="converse"`` (the default) speaks Converse and ConverseStream to any chat
    model. ``api="invoke"`` sends Claude's own Messages body to InvokeModel and
    InvokeModelWithResponseStream, for Claude features that Converse does not carry.
    ``endpoint_url`` replaces ``https://bedrock-runtime.{region}.amazonaws.com``.

    Requests must be signed after the body is serialised: the caller sends
    ``sign(chat_target(...), body)``, because the SigV4 signature covers the body.
    """

    kind = "bedrock"
    dialect: str | None = None
    # Converse takes image bytes or an S3 location, never an http URL, so the dispatcher
    # fetches image URLs before build_body (gateway/images.py). Claude's InvokeModel
    # body gets the fetched bytes as well.
    needs_image_bytes = True

    def __init__(
        self,
        name: str,
        *,
        region: str,
        credentials: Credentials,
        endpoint_url: str | None = None,
        api: BedrockAPI = "converse",
    ) -> None:
        if not _REGION.match(region):
            raise ConfigError(f"providers.{name}.region: {region!r} is not an AWS region name")
        if api not in ("converse", "invoke"):
            raise ConfigError(f"providers.{name}.api: use 'converse' or 'invoke', not {api!r}")
        self.name = name
        self.region = region
        self.api: BedrockAPI = api
        self._credentials = credentials
        default_url = f"https://bedrock-runtime.{region}.amazonaws.com"
        self.base_url = (endpoint_url or default_url).rstrip("/")

    def __repr__(self) -> str:
        return f"BedrockProvider({self.name!r}, region={self.region!r}, api={self.api!r})"

    # --- the request -------------------------------------------------------------------

    def chat_target(self, model: str, *, stream: bool, client_headers: Mapping[str, str]) -> Target:
        """Return the unsigned target. ``sign`` adds the Authorization header."""
        operation = _OPERATIONS[(self.api, stream)]
        url = f"{self.base_url}/model/{quote(model, safe='')}/{operation}"
        headers = {
            "Content-Type": "application/json",
            "Accept": _EVENT_STREAM if stream else "application/json",
        }
        return Target(url, headers)

    def sign(self, target: Target, body: bytes) -> Target:
        """Return ``target`` with SigV4 headers for a POST of ``body``.

        The URL is signed exactly as given, so it must be sent without re-encoding,
        with the model id's ``%3A`` still ``%3A`` on the wire.
        """
        request = AWSRequest(method="POST", url=target.url, data=body, headers=target.headers)
        frozen = self._credentials.get_frozen_credentials()
        SigV4Auth(frozen, SIGNING_SERVICE, self.region).add_auth(request)
        return Target(target.url, dict(request.headers.items()))

    def build_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        requests.check_images(request, model)
        _REQUEST_MODEL.set(model)
        if self.api == "invoke":
            return requests.build_invoke_request(request, model)
        return requests.build_converse_request(request, model)

    def passthrough_body(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        raise InternalError(f"Provider {self.name} has no dialect to pass requests through to.")

    # --- embeddings -------------------------------------------------------------------

    def embed_target(self, model: str) -> Target:
        """Return the unsigned InvokeModel target of an embedding model."""
        url = f"{self.base_url}/model/{quote(model, safe='')}/invoke"
        return Target(url, {"Content-Type": "application/json", "Accept": "application/json"})

    def build_embed_bodies(self, request: EmbeddingRequest, model: str) -> list[dict[str, Any]]:
        return embeddings.build_embedding_bodies(request, model)

    def parse_embed_response(
        self, body: dict[str, Any], headers: Mapping[str, str], model: str
    ) -> EmbeddingBatch:
        return embeddings.parse_embedding_response(body, headers, model)

    # --- the response ------------------------------------------------------------------

    def parse_response(self, body: dict[str, Any]) -> ChatResponse:
        if self.api == "invoke":
            return anthropic_responses.parse_response(body, provider=self.name)
        return responses.parse_converse_response(
            body, provider=self.name, model=_REQUEST_MODEL.get()
        )

    def stream_decoder(self) -> streaming.ConverseStreamDecoder | streaming.InvokeStreamDecoder:
        if self.api == "invoke":
            return streaming.InvokeStreamDecoder(self.name)
        return streaming.ConverseStreamDecoder(self.name, model=_REQUEST_MODEL.get())

    def frame_parser(self) -> EventStreamParser:
        return EventStreamParser(self.name)

    def parse_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return errors.parse_upstream_error(status, body, headers, provider=self.name)
