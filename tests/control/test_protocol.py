"""Unit tests of the sync protocol, snapshot signing, secret storage keys and settings."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import logging
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from smartflow.control import ControlPlaneSettings, start_control_plane
from smartflow.control.store.crypto import SecretBox, load_secret_box
from smartflow.core.errors import ConfigError
from smartflow.sync.protocol import (
    ProtocolError,
    ProviderCredentials,
    SyncReply,
    canonical_json,
    credential_issues,
    parse_reply,
    parse_server_message,
)
from smartflow.sync.signing import (
    PRIVATE_KEY_FILE,
    SignatureError,
    load_or_create_signing_key,
    sign_canonical_snapshot,
    sign_snapshot,
    verify_snapshot,
)
from tests.control.conftest import make_settings

SNAPSHOT = {
    "format": 1,
    "version": 3,
    "created_at": "2026-01-01T00:00:00+00:00",
    "instance": "edge",
    "site": "onprem",
    "content": {
        "teams": [{"name": "equipe", "description": "Équipe ünïcode", "monthly_budget_usd": 0.1}]
    },
}


# --- canonical JSON and signatures ----------------------------------------------------


def test_canonical_json_ignores_key_order() -> None:
    first = canonical_json({"b": 1, "a": {"d": [1, 2], "c": None}})
    second = canonical_json({"a": {"c": None, "d": [1, 2]}, "b": 1})
    assert first == second
    assert first == b'{"a":{"c":null,"d":[1,2]},"b":1}'


def test_canonical_json_keeps_unicode() -> None:
    assert canonical_json({"name": "Équipe"}) == '{"name":"Équipe"}'.encode()


def test_signature_survives_reserialisation(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path)
    message = sign_snapshot(SNAPSHOT, key)
    # The instance reads the message with another JSON library, spacing and key order.
    text = json.dumps(json.loads(message.model_dump_json()), indent=2, sort_keys=False)
    received = parse_server_message(text)
    snapshot = verify_snapshot(received, {key.key_id: key.verify_key})
    assert snapshot.version == 3
    assert snapshot.content.teams[0].description == "Équipe ünïcode"


def test_canonical_signing_matches_sign_snapshot(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path)
    text = sign_canonical_snapshot(canonical_json(SNAPSHOT), key)
    received = parse_server_message(text)
    assert received == sign_snapshot(SNAPSHOT, key)
    snapshot = verify_snapshot(received, {key.key_id: key.verify_key})
    assert snapshot.instance == "edge"
    assert snapshot.content.teams[0].monthly_budget_usd == 0.1


def test_signature_covers_every_field(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path)
    message = sign_snapshot(SNAPSHOT, key)
    trusted = {key.key_id: key.verify_key}
    for field, value in (("instance", "other"), ("site", "cloud"), ("version", 4)):
        changed = {**SNAPSHOT, field: value}
        with pytest.raises(SignatureError):
            verify_snapshot(message.model_copy(update={"snapshot": changed}), trusted)


def test_signed_invalid_snapshot_is_protocol_error(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path)
    message = sign_snapshot({**SNAPSHOT, "format": 99}, key)
    with pytest.raises(ProtocolError, match="snapshot schema"):
        verify_snapshot(message, {key.key_id: key.verify_key})


def test_malformed_signature_rejected(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path)
    message = sign_snapshot(SNAPSHOT, key).model_copy(update={"signature": "not base64!"})
    with pytest.raises(SignatureError, match="base64"):
        verify_snapshot(message, {key.key_id: key.verify_key})


# --- the signing key file -------------------------------------------------------------


def test_signing_key_created_once(tmp_path: Path) -> None:
    first = load_or_create_signing_key(tmp_path)
    second = load_or_create_signing_key(tmp_path)
    assert first.key_id == second.key_id
    assert (tmp_path / PRIVATE_KEY_FILE).stat().st_mode & 0o777 == 0o600


def test_loose_key_mode_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    load_or_create_signing_key(tmp_path)
    (tmp_path / PRIVATE_KEY_FILE).chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_or_create_signing_key(tmp_path)
    assert "chmod 600" in caplog.text


def test_invalid_key_file_rejected(tmp_path: Path) -> None:
    (tmp_path / PRIVATE_KEY_FILE).write_text("not a key")
    with pytest.raises(ConfigError, match="invalid snapshot signing key"):
        load_or_create_signing_key(tmp_path)


# --- messages -------------------------------------------------------------------------


def test_parse_reply_cases() -> None:
    assert parse_reply('{"version": 3}') == SyncReply(version=3)
    assert parse_reply('{"version": 3, "error": "bad"}').rejected
    for text in ("[]", "{}", '{"version": 0}', '{"version": 1, "extra": 1}', "nope"):
        with pytest.raises(ProtocolError):
            parse_reply(text)


def test_server_message_types() -> None:
    assert parse_server_message('{"type": "error", "message": "x"}').type == "error"
    with pytest.raises(ProtocolError, match="unknown message type"):
        parse_server_message('{"type": "delta"}')


@pytest.mark.parametrize(
    ("provider_type", "fields", "valid"),
    [
        ("openai", {"api_key": "k"}, True),
        ("openai", {"aws_access_key_id": "a"}, False),
        ("bedrock", {"aws_access_key_id": "a", "aws_secret_access_key": "s"}, True),
        ("bedrock", {"aws_access_key_id": "a"}, False),
        ("bedrock", {"api_key": "k"}, False),
        ("vertex_gemini", {"service_account_json": "{}"}, True),
        ("vertex_gemini", {"api_key": "k", "service_account_json": "{}"}, False),
    ],
)
def test_credential_issues(provider_type: str, fields: dict[str, str], valid: bool) -> None:
    issues = credential_issues(provider_type, ProviderCredentials.model_validate(fields))
    assert (issues == []) is valid


def test_credentials_masked_unless_revealed() -> None:
    credentials = ProviderCredentials.model_validate({"api_key": "sk-fake-x"})
    assert "sk-fake-x" not in repr(credentials)
    assert credentials.model_dump(mode="json")["api_key"] == "**********"
    revealed = credentials.model_dump(mode="json", context={"reveal_secrets": True})
    assert revealed["api_key"] == "sk-fake-x"


# --- the credential encryption key ----------------------------------------------------


def test_secret_key_from_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("TEST_CONTROL_SECRET", key)
    box = load_secret_box("TEST_CONTROL_SECRET", tmp_path / "secret.key")
    assert not (tmp_path / "secret.key").exists()
    assert SecretBox([key.encode()]).decrypt(box.encrypt({"a": "b"})) == {"a": "b"}


def test_secret_key_file_generated(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    box = load_secret_box("TEST_CONTROL_SECRET_UNSET", path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_secret_box("TEST_CONTROL_SECRET_UNSET", path)
    assert again.decrypt(box.encrypt({"k": "v"})) == {"k": "v"}


def test_secret_key_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = SecretBox([old.encode()]).encrypt({"api_key": "x"})
    monkeypatch.setenv("TEST_CONTROL_SECRET", f"{new},{old}")
    box = load_secret_box("TEST_CONTROL_SECRET", tmp_path / "secret.key")
    assert box.decrypt(token) == {"api_key": "x"}


def test_invalid_secret_key_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_CONTROL_SECRET", "short")
    with pytest.raises(ConfigError, match="32 bytes"):
        load_secret_box("TEST_CONTROL_SECRET", tmp_path / "secret.key")


# --- settings and TLS -----------------------------------------------------------------


def test_tls_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="tls_cert_file"):
        ControlPlaneSettings(tls_cert_file=tmp_path / "cert.pem")


def test_default_database_under_state_dir(tmp_path: Path) -> None:
    settings = ControlPlaneSettings(state_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'control-plane.db'}"
    assert settings.port == 7778
    assert settings.host == "127.0.0.1"


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_serves_https_with_tls_files(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    url = f"sqlite+aiosqlite:///{tmp_path / 'control.db'}"
    settings = make_settings(
        tmp_path / "state", url, tls_cert_file=cert_file, tls_key_file=key_file
    )
    running = await start_control_plane(settings)
    try:
        assert running.url.startswith("https://127.0.0.1:")
        client_context = ssl.create_default_context(cafile=str(cert_file))
        async with aiohttp.ClientSession() as http:
            async with http.get(running.url + "/v1/signing-key", ssl=client_context) as reply:
                assert reply.status == 200
                body = await reply.json()
        assert len(base64.b64decode(body["public_key"])) == 32
    finally:
        await running.stop()
