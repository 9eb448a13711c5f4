"""Google Gemini adapters: the Gemini API (API key) and Gemini on Vertex AI (OAuth token)."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from smartflow.core.errors import ConfigError, InternalError, UpstreamError, UpstreamUnavailable
from smartflow.core.types import ChatRequest, ChatResponse
from smartflow.dialects.gemini import embeddings, errors, requests, responses, streaming
from smartflow.dialects.openai.embeddings import EmbeddingBatch, EmbeddingRequest
from smartflow.providers.base import Secret, Target
from smartflow.transport.sse import SSEParser

__all__ = [
    "GeminiProvider",
    "ServiceAccountTokens",
    "StaticToken",
    "TokenSource",
    "VertexGeminiProvider",
]

logger = logging.getLogger(__name__)

GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"
VERTEX_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

_LOCATION = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# Project ids, including the legacy domain-scoped form "example.com:project".
_PROJECT = re.compile(r"^[a-z0-9.:-]{2,100}$")
# A token closer than this to its expiry is refreshed before use (blocking).
_MIN_VALIDITY_S = 60.0
# A token closer than this to its expiry is refreshed in a background thread.
_EARLY_REFRESH_S = 300.0
# Timeout of one HTTP attempt to the token endpoint. google-auth 2.x makes up to three
# attempts when the endpoint answers 5xx.
_TOKEN_TIMEOUT_S = 10.0


class _GeminiAdapter:
    """Base of the Gemini API and Vertex AI adapters, which share body, response and
    stream formats."""

    kind = "gemini"
    dialect: str | None = None

    def __init__(self, name: str, *, base_url: str, api_version: str) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version

    def _model_url(self, model: str) -> str:
        raise NotImplementedError

    def _auth_headers(self) -> dict[str, str]:
        raise NotImplementedError

    def chat_target(self, model: str, *, stream: bool, client_headers: Mapping[str, str]) -> Target:
        method = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
        headers = {**self._auth_headers(), "Content-Type": "application/json"}
        if stream:
            headers["Accept"] = "text/event-stream"
        return Target(self._model_url(model) + method, headers)

    def build_body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        return requests.build_request(request, model)

    def passthrough_body(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        raise InternalError(
            f"Provider {self.name} has no pass-through dialect; its requests are translated."
        )

    def parse_response(self, body: dict[str, Any]) -> ChatResponse:
        return responses.parse_response(body, provider=self.name)

    def stream_decoder(self) -> streaming.StreamDecoder:
        return streaming.StreamDecoder(self.name)

    def frame_parser(self) -> SSEParser:
        return SSEParser()

    def parse_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return errors.parse_upstream_error(status, body, headers, provider=self.name)


class GeminiProvider(_GeminiAdapter):
    """The Gemini API: ``{base_url}/{api_version}/models/{model}:generateContent`` with the
    key in ``x-goog-api-key``. ``base_url`` is the host only."""

    kind = "gemini"

    def __init__(
        self,
        name: str,
        *,
        api_key: Secret,
        base_url: str | None = None,
        api_version: str = "v1beta",
    ) -> None:
        super().__init__(name, base_url=base_url or GEMINI_BASE_URL, api_version=api_version)
        self._api_key = api_key

    def _model_url(self, model: str) -> str:
        name = model.removeprefix("models/")
        return f"{self.base_url}/{self.api_version}/models/{quote(name, safe='')}"

    def _auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self._api_key.reveal()}

    # NOTE: only the Gemini API serves embeddings here. Vertex AI uses ``:predict`` and
    # other bodies, which VertexGeminiProvider does not build yet.
    def embed_target(self, model: str) -> Target:
        headers = {**self._auth_headers(), "Content-Type": "application/json"}
        return Target(self._model_url(model) + ":batchEmbedContents", headers)

    def build_embed_bodies(self, request: EmbeddingRequest, model: str) -> list[dict[str, Any]]:
        return embeddings.build_embedding_bodies(request, model)

    def parse_embed_response(
        self, body: dict[str, Any], headers: Mapping[str, str], model: str
    ) -> EmbeddingBatch:
        return embeddings.parse_embedding_response(body)


# --- Vertex AI ---------------------------------------------------------------------------


class TokenSource(Protocol):
    """Supplies the OAuth access token for the next Vertex AI request."""

    def token(self) -> str: ...


class StaticToken:
    """A fixed access token, such as one from ``gcloud auth print-access-token``.

    Google access tokens expire (after one hour by default), so this suits tests and
    short runs; use a service-account file for a long-running gateway.
    """

    def __init__(self, token: Secret) -> None:
        self._token = token

    def token(self) -> str:
        return self._token.reveal()


class ServiceAccountTokens:
    """Access tokens exchanged for a service-account key file with ``google-auth``.

    google-auth signs a JWT with the file's private key and posts it to the file's
    ``token_uri``. ``prepare`` runs that exchange in a worker thread. ``token`` refreshes
    a token with less than five minutes left in a background thread, and only a missing
    or nearly expired token in the calling thread.
    """

    def __init__(self, provider: str, path: str | Path) -> None:
        try:
            from google.auth.transport.requests import Request  # noqa: PLC0415
            from google.oauth2 import service_account  # noqa: PLC0415 (optional dependency)
        except ImportError as exc:
            raise ConfigError(
                f"providers.{provider}: a service-account file needs the google-auth and "
                "requests packages to obtain access tokens; install them with "
                "`pip install google-auth requests`, or give a static access token instead"
            ) from exc
        load_file: Any = service_account.Credentials.from_service_account_file
        try:
            self._credentials: Any = load_file(str(path), scopes=[VERTEX_SCOPE])
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"providers.{provider}: cannot read the service-account file {path}: {exc}"
            ) from exc
        self.provider = provider
        # google-auth has no public getter for the file's token_uri.
        self.token_uri = str(getattr(self._credentials, "_token_uri", "(unknown)"))
        # One requests session for every exchange. google-auth's own default timeout
        # is 120 s per attempt.
        self._request = functools.partial(Request(), timeout=_TOKEN_TIMEOUT_S)
        self._lock = threading.Lock()
        self._background: threading.Thread | None = None
        self._prepared = False

    def _seconds_left(self) -> float | None:
        expiry = self._credentials.expiry
        if not self._credentials.token or expiry is None:
            return None
        # google-auth keeps ``expiry`` as a naive datetime in UTC.
        now = datetime.now(UTC).replace(tzinfo=None)
        return float((expiry - now).total_seconds())

    def _needs_refresh(self, unless_valid_for: float) -> bool:
        left = self._seconds_left()
        return left is None or left < unless_valid_for

    def _refresh(self, *, unless_valid_for: float) -> None:
        from google.auth.exceptions import GoogleAuthError  # noqa: PLC0415

        with self._lock:
            if not self._needs_refresh(unless_valid_for):
                return  # another thread refreshed it meanwhile
            try:
                self._credentials.refresh(self._request)
            except GoogleAuthError as exc:
                raise self._exchange_error(exc) from exc
        logger.info("%s: obtained a new Vertex AI access token", self.provider)

    def _exchange_error(self, exc: Exception) -> UpstreamError:
        from google.auth.exceptions import TransportError  # noqa: PLC0415

        # RefreshError's first argument is "error: error_description" from the token
        # endpoint; TransportError wraps the requests exception.
        reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        message = (
            f"Cannot obtain a Vertex AI access token for {self.provider} from the token "
            f"endpoint {self.token_uri}: {reason}"
        )
        if isinstance(exc, TransportError) or getattr(exc, "retryable", False):
            return UpstreamUnavailable(message, provider=self.provider)
        # A rejected key or assertion fails the same way on every retry.
        return UpstreamError(
            message + " Check the service-account file configured for this gateway.",
            provider=self.provider,
        )

    def _refresh_in_background(self) -> None:
        try:
            self._refresh(unless_valid_for=_EARLY_REFRESH_S)
        except UpstreamError as exc:
            logger.warning("%s: early token refresh failed: %s", self.provider, exc.message)

    async def prepare(self) -> None:
        """Refresh a missing or nearly expired token in a worker thread, so that the next
        ``token`` call returns at once."""
        if self._needs_refresh(_MIN_VALIDITY_S):
            await asyncio.to_thread(self._refresh, unless_valid_for=_MIN_VALIDITY_S)
            self._prepared = True

    def token(self) -> str:
        if self._prepared:
            # ``prepare`` exchanged it for this very request: use it as it is, even when
            # the provider granted less validity than the refresh margins ask for.
            self._prepared = False
            return str(self._credentials.token)
        left = self._seconds_left()
        if left is None or left < _MIN_VALIDITY_S:
            # NOTE: this blocks the event loop for the whole exchange, including
            # google-auth's own retries, unless ``prepare`` was awaited first.
            self._refresh(unless_valid_for=_MIN_VALIDITY_S)
            return str(self._credentials.token)
        # Read before starting a background refresh, which may replace it at any moment.
        current = str(self._credentials.token)
        if left < _EARLY_REFRESH_S and (
            self._background is None or not self._background.is_alive()
        ):
            self._background = threading.Thread(
                target=self._refresh_in_background, name=f"{self.provider}-token", daemon=True
            )
            self._background.start()
        return current


def vertex_base_url(location: str) -> str:
    """Return the Vertex AI host of a location (``global`` has no regional prefix)."""
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


class VertexGeminiProvider(_GeminiAdapter):
    """Gemini on Vertex AI, authenticated with an OAuth bearer token.

    Give exactly one of ``access_token`` (used as it is) and ``credentials_file`` (a
    service-account key file, exchanged for tokens with google-auth).
    """

    kind = "vertex_gemini"

    def __init__(
        self,
        name: str,
        *,
        project: str,
        location: str,
        access_token: Secret | None = None,
        credentials_file: str | Path | None = None,
        base_url: str | None = None,
        api_version: str = "v1",
    ) -> None:
        if not _PROJECT.match(project):
            raise ConfigError(f"providers.{name}: invalid Vertex AI project id {project!r}")
        if not _LOCATION.match(location):
            raise ConfigError(
                f"providers.{name}: invalid Vertex AI location {location!r}; use a region "
                "such as us-central1, or global"
            )
        if (access_token is None) == (credentials_file is None):
            raise ConfigError(
                f"providers.{name}: give either an access token or a service-account "
                "credentials file for Vertex AI, not both and not neither"
            )
        super().__init__(
            name, base_url=base_url or vertex_base_url(location), api_version=api_version
        )
        self.project = project
        self.location = location
        self._tokens: TokenSource = (
            StaticToken(access_token)
            if access_token is not None
            else ServiceAccountTokens(name, credentials_file)  # type: ignore[arg-type]
        )

    def _model_url(self, model: str) -> str:
        return (
            f"{self.base_url}/{self.api_version}/projects/{self.project}/locations/"
            f"{self.location}/publishers/google/models/{quote(model, safe='')}"
        )

    async def prepare_auth(self) -> None:
        """Obtain a fresh access token off the event loop, if the token source needs one.

        TODO: the dispatcher does not await this yet, so the first exchange and every
        overdue refresh run inside ``chat_target`` and block the event loop.
        """
        prepare = getattr(self._tokens, "prepare", None)
        if prepare is not None:
            await prepare()

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + self._tokens.token()}
