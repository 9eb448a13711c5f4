"""Settings of one control-plane process."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = ["DEFAULT_PORT", "ControlPlaneSettings"]

DEFAULT_PORT = 7778


class ControlPlaneSettings(BaseModel):
    """Settings of one control-plane process: listen address, state, keys and timing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    """TCP port; 0 picks a free one (tests)."""
    state_dir: Path = Path(".smartflow-control")
    """Directory for the SQLite database, the signing key pair and the secret key file.
    Created with mode 0700 when missing. Control-plane processes that share one database
    must share the signing key files too, because instances trust one key id."""
    database_url: str | None = None
    """SQLAlchemy URL with an async driver: ``sqlite+aiosqlite:///PATH`` or
    ``postgresql+asyncpg://USER@HOST/DB``. Default: ``control-plane.db`` in ``state_dir``."""
    tls_cert_file: Path | None = None
    """PEM certificate chain; with ``tls_key_file`` the API and the sync stream use HTTPS."""
    tls_key_file: Path | None = None
    secret_key_env: str = "SMARTFLOW_CONTROL_SECRET_KEY"
    """Variable with the Fernet key(s) that encrypt provider credentials in the store,
    comma-separated, newest first. Takes precedence over ``secret_key_file``."""
    secret_key_file: Path | None = None
    """File with the Fernet key(s), one a line, newest first. Default: ``secret.key`` in
    ``state_dir``, generated with mode 0600 on first start when neither source is set."""
    admin_token_env: str = "SMARTFLOW_CONTROL_ADMIN_TOKEN"
    """Variable whose token is registered as the first admin token when the store has none."""
    bootstrap_admin_token: SecretStr | None = None
    """The first admin token itself, in place of the variable (tests and embedding)."""
    sync_poll_interval_s: float = Field(5.0, gt=0)
    """Seconds between reads of the newest snapshot version, which find versions made by
    another control-plane process sharing the database. One task per process makes them
    while a sync stream is open. Versions made by this process are sent at once."""
    heartbeat_s: float = Field(20.0, gt=0)
    """WebSocket ping interval of the sync stream; a peer silent for twice this is dropped."""
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Largest WebSocket message accepted from an instance, and largest request body."""
    snapshot_retention: int = Field(200, ge=2)
    """Snapshot versions kept in the store; older ones are deleted as new ones are made."""
    enrollment_token_max_ttl_s: int = Field(30 * 24 * 3600, ge=60)
    dashboard_session_ttl_s: int = Field(8 * 3600, ge=60)
    """Seconds a dashboard sign-in stays valid. After that, the dashboard shows the sign-in
    page again."""

    @model_validator(mode="after")
    def _check_tls(self) -> ControlPlaneSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both 'tls_cert_file' and 'tls_key_file', or neither")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.state_dir / 'control-plane.db').resolve()}"

    @property
    def resolved_secret_key_file(self) -> Path:
        return self.secret_key_file or self.state_dir / "secret.key"
