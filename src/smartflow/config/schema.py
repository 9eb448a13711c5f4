"""The gateway configuration file: its schema, loading and validation."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from smartflow.config.intercept import InterceptSettings
from smartflow.config.telemetry import TelemetrySettings
from smartflow.core.errors import ConfigError

__all__ = [
    "ControlPlaneLinkSettings",
    "DeploymentSettings",
    "GatewayConfig",
    "ImageFetchSettings",
    "KeySettings",
    "PeerCredential",
    "PeerSettings",
    "PeeringSettings",
    "ProviderSettings",
    "RetrySettings",
    "ServerSettings",
    "TimeoutSettings",
    "UsageShippingSettings",
    "load_config",
    "parse_config",
]

ProviderType = Literal[
    "openai", "azure_openai", "anthropic", "gemini", "vertex_gemini", "cohere", "bedrock"
]

_SECRET_FIELDS = ("api_key", "key", "secret", "token", "password")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(7775, ge=0, le=65535)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger ones get 413."""
    access_log: bool = True
    instance: str = "local"
    site: str = "local"
    idle_timeout_s: float = Field(15.0, gt=0, le=3600)
    """Seconds a connection may sit without a complete request before it is closed: after
    the previous response, or from the start while the headers trickle in."""


class ProviderSettings(_Strict):
    """One upstream account: its API type, endpoint and where its credential lives."""

    type: ProviderType
    base_url: str | None = None
    """OpenAI: up to and including /v1. Azure: the resource URL. Anthropic, Gemini,
    Vertex AI and Cohere: the host only."""
    api_key_env: str | None = None
    api_key_file: str | None = None
    api_version: str | None = None
    """Azure OpenAI only: the api-version query value, or ``v1`` for the v1 API path."""
    anthropic_version: str = "2023-06-01"
    vertex_project: str | None = None
    """vertex_gemini only: the Google Cloud project id."""
    vertex_location: str | None = None
    """vertex_gemini only: the region, such as us-central1, or global."""
    credentials_file: str | None = None
    """vertex_gemini only: a service-account key file, exchanged for access tokens with
    google-auth. Without it, api_key_env or api_key_file names a static access token."""
    region: str | None = None
    """bedrock only: the AWS region of the bedrock-runtime endpoint, such as us-east-1."""
    api: Literal["converse", "invoke"] = "converse"
    """bedrock only: ``converse`` for any chat model, ``invoke`` for Claude's own body."""
    aws_profile: str | None = None
    """bedrock only: take the credentials from this profile of the shared credentials
    file, not from the environment."""
    aws_credentials_file: str | None = None
    """bedrock only: the shared credentials file. Default: $AWS_SHARED_CREDENTIALS_FILE,
    else ~/.aws/credentials."""
    aws_access_key_id_env: str | None = None
    """bedrock only: the variable with the access key id, in place of AWS_ACCESS_KEY_ID."""
    aws_secret_access_key_env: str | None = None
    """bedrock only: the variable with the secret key, in place of AWS_SECRET_ACCESS_KEY."""
    aws_session_token_env: str | None = None
    """bedrock only: the variable with the session token, in place of AWS_SESSION_TOKEN."""

    @field_validator("api_version", "anthropic_version", mode="before")
    @classmethod
    def _date_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 2024-10-21 as a date; the version is that date's text.
        if isinstance(value, datetime.date):
            return value.isoformat()
        return value

    @model_validator(mode="before")
    @classmethod
    def _reject_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in _SECRET_FIELDS:
                if name in data:
                    raise ValueError(
                        f"'{name}' is not allowed in the config file: put the credential in an "
                        "environment variable and name it in 'api_key_env', or in a file named "
                        "by 'api_key_file'"
                    )
        return data

    @model_validator(mode="after")
    def _check_fields(self) -> ProviderSettings:
        if self.api_key_env and self.api_key_file:
            raise ValueError("set either 'api_key_env' or 'api_key_file', not both")
        if self.type == "azure_openai":
            if not self.base_url:
                raise ValueError("'base_url' is required for azure_openai: the resource URL")
            if not self.api_version:
                raise ValueError(
                    "'api_version' is required for azure_openai, e.g. 2024-10-21 or v1"
                )
        if self.type == "vertex_gemini":
            if not self.vertex_project or not self.vertex_location:
                raise ValueError(
                    "'vertex_project' and 'vertex_location' are required for vertex_gemini"
                )
            if self.credentials_file and (self.api_key_env or self.api_key_file):
                raise ValueError(
                    "for vertex_gemini set either 'credentials_file' (a service account) or "
                    "'api_key_env'/'api_key_file' (a static access token), not both"
                )
        elif self.vertex_project or self.vertex_location or self.credentials_file:
            raise ValueError(
                "'vertex_project', 'vertex_location' and 'credentials_file' apply to "
                "vertex_gemini only"
            )
        if self.type == "bedrock":
            self._check_bedrock()
        elif self.region or self.api != "converse" or self._aws_fields():
            raise ValueError("'region', 'api' and the 'aws_*' fields apply to bedrock only")
        return self

    def _aws_fields(self) -> list[str]:
        names = (
            "aws_profile",
            "aws_credentials_file",
            "aws_access_key_id_env",
            "aws_secret_access_key_env",
            "aws_session_token_env",
        )
        return [name for name in names if getattr(self, name)]

    def _check_bedrock(self) -> None:
        if not self.region:
            raise ValueError("'region' is required for bedrock, e.g. us-east-1")
        if self.api_key_env or self.api_key_file:
            raise ValueError(
                "bedrock signs requests with AWS credentials, not an API key: remove "
                "'api_key_env'/'api_key_file' and set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or name a profile in 'aws_profile'"
            )
        named = self.aws_access_key_id_env or self.aws_secret_access_key_env
        if self.aws_profile and (named or self.aws_session_token_env):
            raise ValueError("set either 'aws_profile' or the 'aws_*_env' names, not both")
        if bool(self.aws_access_key_id_env) != bool(self.aws_secret_access_key_env):
            raise ValueError(
                "set both 'aws_access_key_id_env' and 'aws_secret_access_key_env', or neither"
            )


class DeploymentSettings(_Strict):
    """One place a public model can be served: a provider and its model (or Azure deployment)."""

    provider: str
    model: str
    site: str | None = None
    """Site of the deployment (such as on-prem or cloud), for residency rules.
    Default: the instance's own site."""
    base_model: str | None = None
    """The model family name to normalise parameters for, when ``model`` is an Azure
    deployment name or an alias the capability profiles do not know."""
    pinned: dict[str, Any] = {}
    """Parameters applied after the caller's values, such as ``top_k`` or
    ``thinking_budget``. On fallback, the first deployment's pins carry over."""


class KeySettings(_Strict):
    """A virtual key, stored as the SHA-256 of the key text."""

    name: str
    sha256: str
    team: str = "default"
    user: str | None = None
    labels: list[str] = []
    """Classification labels every request with this key carries, for compliance rules."""
    strict_params: bool = False
    """Reject a request whose parameters would have to change for its target model."""

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError(
                "must be the 64-character hex SHA-256 of the key; get it with `smartflow keys hash`"
            )
        return value


class RetrySettings(_Strict):
    attempts_per_deployment: int = Field(2, ge=1, le=10)
    backoff_initial_s: float = Field(0.25, ge=0)
    backoff_max_s: float = Field(8.0, ge=0)
    max_retry_after_s: float = Field(30.0, ge=0)
    """A ``retry-after`` longer than this moves on to the next deployment without waiting."""


class TimeoutSettings(_Strict):
    connect_s: float = Field(10.0, gt=0)
    read_s: float = Field(120.0, gt=0)
    """Maximum wait in seconds for the next bytes from an upstream, the first ones included."""


class AdminToken(_Strict):
    """A token for the admin API, stored as the SHA-256 of the token text."""

    name: str
    sha256: str
    role: Literal["admin", "policy_editor", "viewer"] = "admin"

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        return KeySettings._hex_digest(value)


class NormalizationSettings(_Strict):
    profiles_dir: str | None = None
    """A directory of YAML capability profiles that extend or override the built-in ones."""
    strict: bool = False
    """Reject, instead of change, parameters a target cannot take, for every caller."""


class ImageFetchSettings(_Strict):
    """Limits and allow-lists of the image fetcher, which serves providers that take only
    image bytes (Bedrock).

    Only http and https URLs are fetched, and only from public addresses, unless an
    allow-list names the host or its address.
    """

    allow_hosts: list[str] = []
    """Host names fetched from whatever address they resolve to, such as an internal
    image server. ``*.example.com`` matches every subdomain of example.com, not
    example.com itself. A name never opens a cloud metadata address."""
    allow_cidrs: list[str] = []
    """Address ranges fetched from although they are not public, such as 10.20.0.0/16.
    A cloud metadata address is opened only by an entry of that one address, such as
    169.254.169.254/32."""
    max_bytes: int = Field(5 * 1024 * 1024, ge=1)
    """Largest image accepted, in bytes after any content decoding (default 5 MiB)."""
    timeout_s: float = Field(10.0, gt=0)
    """Maximum time for one image: name resolution, every redirect and the body."""
    max_redirects: int = Field(3, ge=0, le=20)
    """Redirects followed per image; every hop's address is checked again."""
    max_images: int = Field(20, ge=1)
    """Most image URLs fetched for one request; more is rejected with 400."""

    @field_validator("allow_hosts")
    @classmethod
    def _host_names(cls, values: list[str]) -> list[str]:
        names = []
        for value in values:
            name = value.strip().lower().rstrip(".")
            bare = name.removeprefix("*.")
            if not bare or any(c in bare for c in "/:@*[] ") or _is_ip_address(bare):
                raise ValueError(
                    f"{value!r} is not a host name: give a name such as images.example.com "
                    "or *.example.com, and list IP addresses in 'allow_cidrs'"
                )
            if not bare.isascii():
                # URL hosts are compared in their ASCII (punycode) form.
                ascii_name = bare.encode("idna").decode("ascii")
                name = name.removesuffix(bare) + ascii_name
            names.append(name)
        return names

    @field_validator("allow_cidrs")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        networks = []
        for value in values:
            try:
                networks.append(str(ipaddress.ip_network(value.strip())))
            except ValueError as exc:
                raise ValueError(
                    f"{value!r} is not a network in CIDR form such as 10.20.0.0/16 or "
                    f"fd12:3456::/48: {exc}"
                ) from exc
        return networks


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class UsageShippingSettings(_Strict):
    """The destination of an instance's queued usage events and feedback scores."""

    url: str = Field(pattern=r"^https?://[^/\s]+/v1/events$")
    """The control plane's ingest URL, such as http://127.0.0.1:7778/v1/events."""
    credential_env: str = "SMARTFLOW_INSTANCE_CREDENTIAL"
    """Variable with the instance credential that enrollment returned."""
    batch_events: int = Field(500, ge=1, le=10_000)
    """Maximum events per request."""
    idle_wait_s: float = Field(1.0, gt=0, le=60, allow_inf_nan=False)
    """Seconds to wait for new events before checking the queue again."""
    fill_wait_s: float = Field(0.5, ge=0, le=60, allow_inf_nan=False)
    """Seconds to wait after sending a partial batch, so the next one has time to fill.
    Full batches go out one after another. Events reach the control plane up to this much
    later, and each request and acknowledgement costs less per event."""
    backoff_max_s: float = Field(60.0, gt=0, le=3600, allow_inf_nan=False)
    """Maximum wait between tries while the control plane is unreachable."""


class UsageQueueConfig(_Strict):
    """Bounds and durability of the local queue of usage events (``usage.queue``)."""

    max_events: int = Field(1_000_000, ge=1)
    """Maximum events kept on disk while the control plane is unreachable."""
    max_bytes: int = Field(512 * 1024 * 1024, ge=64 * 1024)
    """Maximum JSON bytes of events kept on disk. The files take up to one segment more."""
    on_full: Literal["drop_oldest", "reject_new"] = "drop_oldest"
    """Action at a bound: drop the oldest events, or reject new ones. Either way each
    event is counted in ``smartflow_usage_events_dropped_total`` and logged."""
    buffer_events: int = Field(10_000, ge=1)
    """Events held in memory before they are written; more are rejected and counted."""
    batch_wait_s: float = Field(0.01, ge=0, le=1)
    """Seconds the writer waits for more events before writing a batch."""
    fsync_interval_s: float = Field(1.0, ge=0, le=60)
    """Seconds between syncs to disk, the most a power loss can lose. With 0 every batch
    is synced, which costs about twice the CPU per event."""


class UsageSettings(_Strict):
    enabled: bool = False
    """Record a priced usage event per request in a durable queue under ``state_dir``.

    When the file does not set it, events are on for an instance linked to a control plane
    or with ``shipping``, and off for a standalone gateway, whose queue nobody would read."""
    queue: UsageQueueConfig = UsageQueueConfig()
    shipping: UsageShippingSettings | None = None
    """Ship the queued events to a control plane; without it they stay queued on disk."""


class ControlPlaneLinkSettings(_Strict):
    """The link of a linked instance to its control plane.

    A linked instance takes its policies, providers, models and keys from the control
    plane's snapshots; the file's own ``providers``, ``models``, ``keys`` and
    ``policy_files`` are ignored.
    """

    url: str = Field(pattern=r"^https?://[^/\s]+/?$")
    """Base URL of the control plane, such as https://127.0.0.1:7778. The instance only
    dials out to it."""
    name: str | None = None
    """Name to enroll under. Default: ``server.instance``."""
    site: str | None = None
    """Site to enroll into. Default: ``server.site``."""
    enroll_token_env: str = "SMARTFLOW_ENROLL_TOKEN"
    """Variable with the one-time enrollment token, read only while not yet enrolled."""
    ca_file: str | None = None
    """PEM file of the CA that signed the control plane's certificate (https only)."""
    fingerprint: str | None = Field(
        None, pattern=r"^(sha256:)?([0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}$"
    )
    """SHA-256 of the control plane's DER certificate in hex, with or without colons.
    Pins that certificate in place of CA checks (https only)."""
    secret_key_env: str = "SMARTFLOW_INSTANCE_SECRET_KEY"
    """Variable with the Fernet key(s) that encrypt the instance credential and the saved
    snapshot. Without it, a key file is generated under ``state_dir`` with mode 0600."""
    max_staleness_s: float | None = Field(None, gt=0)
    """Seconds without a live link after which the configuration counts as stale;
    ``None`` never counts it stale."""
    on_stale: Literal["serve", "reject"] = "serve"
    """``reject`` rejects every request with 503 while the configuration is stale."""
    retry_initial_s: float = Field(0.5, gt=0)
    """First wait before reconnecting; it doubles per failure, with full jitter."""
    retry_max_s: float = Field(30.0, gt=0)
    """Maximum wait between reconnection attempts, in seconds."""

    @model_validator(mode="after")
    def _check_tls(self) -> ControlPlaneLinkSettings:
        if self.ca_file and self.fingerprint:
            raise ValueError("set either 'ca_file' or 'fingerprint', not both")
        if (self.ca_file or self.fingerprint) and not self.url.startswith("https://"):
            raise ValueError("'ca_file' and 'fingerprint' need an https:// url")
        return self


class PeerSettings(_Strict):
    """The instance that serves the deployments of another site."""

    url: str = Field(pattern=r"^https?://[^/\s]+/?$")
    """Base URL of that instance, such as http://127.0.0.1:7785."""
    token_env: str | None = None
    """Environment variable with the peer credential this instance presents there."""
    token_file: str | None = None
    """File with the peer credential, in place of ``token_env``."""

    @model_validator(mode="after")
    def _one_credential(self) -> PeerSettings:
        if bool(self.token_env) == bool(self.token_file):
            raise ValueError("set exactly one of 'token_env' and 'token_file'")
        return self


class PeerCredential(_Strict):
    """A peer credential that another instance presents, stored as its SHA-256."""

    name: str
    """Name of that instance, written in the log of each request it forwards."""
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        return KeySettings._hex_digest(value)


class PeeringSettings(_Strict):
    """Linked routing: requests for deployments of another site go to that site's instance."""

    sites: dict[str, PeerSettings] = {}
    """Site name to the instance that serves it. A deployment at a listed site is
    forwarded to that instance in the caller's dialect, so its provider needs no
    credentials here."""
    accept: list[PeerCredential] = []
    """Instances allowed to forward requests here. Only their requests may carry the
    caller's identity in headers, and such a request is never forwarded again."""


class GatewayConfig(_Strict):
    state_dir: str = ".smartflow"
    """Directory for state the instance keeps across restarts, such as policy versions."""
    policy_files: list[str] = []
    """YAML files of policy documents, used while the policy store under ``state_dir`` has
    no version yet. ``builtin:default`` names the packaged default policy."""
    server: ServerSettings = ServerSettings()
    admin_tokens: list[AdminToken] = []
    normalization: NormalizationSettings = NormalizationSettings()
    usage: UsageSettings = UsageSettings()
    providers: dict[str, ProviderSettings] = {}
    models: dict[str, list[DeploymentSettings]] = {}
    keys: list[KeySettings] = []
    retry: RetrySettings = RetrySettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    image_fetch: ImageFetchSettings = ImageFetchSettings()
    intercept: InterceptSettings = InterceptSettings()
    control_plane: ControlPlaneLinkSettings | None = None
    """Link to a control plane; see ``ControlPlaneLinkSettings``."""
    peering: PeeringSettings = PeeringSettings()
    telemetry: TelemetrySettings = TelemetrySettings()

    @model_validator(mode="before")
    @classmethod
    def _default_usage(cls, data: Any) -> Any:
        """Turn usage events on where a control plane receives them, unless set."""
        if not isinstance(data, dict):
            return data
        usage = data.get("usage") or {}
        if not isinstance(usage, dict) or "enabled" in usage:
            return data
        if data.get("control_plane") is not None or usage.get("shipping") is not None:
            return {**data, "usage": {**usage, "enabled": True}}
        return data

    @model_validator(mode="after")
    def _check_references(self) -> GatewayConfig:
        if self.server.site in self.peering.sites:
            raise ValueError(
                f"peering.sites.{self.server.site}: this instance's own site (server.site) "
                "cannot be served by a peer"
            )
        for model, deployments in self.models.items():
            if not deployments:
                raise ValueError(f"models.{model}: list at least one deployment")
            for i, deployment in enumerate(deployments):
                if deployment.provider not in self.providers:
                    known = ", ".join(sorted(self.providers)) or "none"
                    raise ValueError(
                        f"models.{model}[{i}].provider: unknown provider {deployment.provider!r} "
                        f"(defined: {known})"
                    )
        return self


def _format_error(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        path = ".".join(str(p) for p in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}: {message}")
    return f"invalid configuration in {source}:\n" + "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    """Validate configuration data; raise ConfigError listing every invalid field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from exc


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and validate a YAML configuration file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {file}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {file}: {exc}") from exc
    return parse_config(data, str(file))
