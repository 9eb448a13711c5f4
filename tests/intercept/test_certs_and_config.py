"""Certificates, the ``certs`` and ``keys identity`` commands, config checks, DNS resolution."""

from __future__ import annotations

import asyncio
import io
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import dns.message
import dns.rrset
import pytest

from smartflow.cli import main
from smartflow.config.schema import parse_config
from smartflow.core.errors import ConfigError
from smartflow.intercept.certs import certificate_hosts, create_ca, issue_leaf, load_ca
from smartflow.intercept.identity import identity_hash
from smartflow.intercept.loop import LoopDetected, OwnAddresses
from smartflow.intercept.resolver import UpstreamResolver


def test_ca_and_leaf_files(tmp_path: Path) -> None:
    ca = create_ca(tmp_path / "ca", passphrase=b"pw")
    leaf = issue_leaf(ca, ["api.openai.com", "API.Anthropic.com."], tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "ca" / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(leaf.key_file.stat().st_mode) == 0o600
    assert b"ENCRYPTED" in (tmp_path / "ca" / "ca-key.pem").read_bytes()
    assert certificate_hosts(leaf.cert_file) == ["api.openai.com", "api.anthropic.com"]
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(leaf.cert_file, leaf.key_file)
    client = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.pem"))
    assert client.cert_store_stats()["x509_ca"] == 1


def test_encrypted_ca_needs_passphrase(tmp_path: Path) -> None:
    create_ca(tmp_path, passphrase=b"pw")
    with pytest.raises(ConfigError, match="encrypted"):
        load_ca(tmp_path)
    with pytest.raises(ConfigError, match="wrong passphrase"):
        load_ca(tmp_path, b"other")
    assert load_ca(tmp_path, b"pw").certificate.subject


def test_existing_ca_not_replaced(tmp_path: Path) -> None:
    create_ca(tmp_path)
    with pytest.raises(ConfigError, match="--force"):
        create_ca(tmp_path)


def test_certs_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CA_PASSPHRASE", "secret")
    directory = str(tmp_path / "ca")
    assert main(["certs", "init", "--dir", directory, "--passphrase-env", "CA_PASSPHRASE"]) == 0
    assert main(["certs", "issue", "api.openai.com", "--dir", directory]) == 2
    assert "encrypted" in capsys.readouterr().err
    code = main(
        [
            "certs",
            "issue",
            "api.openai.com",
            "--dir",
            directory,
            "--passphrase-env",
            "CA_PASSPHRASE",
        ]
    )
    assert code == 0
    assert "cert_file:" in capsys.readouterr().out
    assert (tmp_path / "ca" / "api.openai.com.pem").exists()


def test_keys_identity_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SALT", "s1")
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-abc\n"))
    assert main(["keys", "identity", "--salt-env", "SALT"]) == 0
    assert capsys.readouterr().out.strip() == identity_hash(b"s1", "sk-abc")


@pytest.mark.parametrize(
    ("intercept", "message"),
    [
        ({"enabled": True}, "'certificates' is required"),
        (
            {"enabled": True, "certificates": [{"cert_file": "c", "key_file": "k"}]},
            "set 'addresses'",
        ),
        (
            {
                "enabled": True,
                "certificates": [{"cert_file": "c", "key_file": "k"}],
                "nameservers": ["10.0.0.53"],
            },
            "salt",
        ),
        ({"nameservers": ["dns.example.com"]}, "not a name server"),
        ({"hosts": {"api.openai.com": {"dialect": "openai", "addresses": ["x"]}}}, "not an"),
    ],
)
def test_invalid_intercept_config(intercept: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"intercept": intercept})


def test_intercept_off_by_default() -> None:
    config = parse_config({})
    assert config.intercept.enabled is False
    assert set(config.intercept.hosts) == {"api.openai.com", "api.anthropic.com"}


class _DNSServer(asyncio.DatagramProtocol):
    """A DNS server that returns one A record for one name and counts the queries."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.queries = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        if question.name.to_text() == self.name + "." and question.rdtype == 1:
            response.answer.append(
                dns.rrset.from_text(self.name + ".", 60, "IN", "A", self.address)
            )
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def dns_server() -> AsyncIterator[tuple[_DNSServer, int]]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: _DNSServer("api.openai.com", "127.0.0.9"), local_addr=("127.0.0.1", 0)
    )
    try:
        yield server, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def test_resolver_asks_configured_nameserver(dns_server: tuple[_DNSServer, int]) -> None:
    server, port = dns_server
    resolver = UpstreamResolver({}, [("127.0.0.1", port)], OwnAddresses())
    assert await resolver.lookup("api.openai.com", 443) == [("127.0.0.9", 443)]
    assert await resolver.lookup("api.openai.com", 443) == [("127.0.0.9", 443)]
    assert server.queries == 2  # A and AAAA once; the second lookup is cached
    with pytest.raises(OSError, match="no address"):
        await resolver.lookup("api.anthropic.com", 443)


async def test_resolver_rejects_own_address(dns_server: tuple[_DNSServer, int]) -> None:
    _, port = dns_server
    own = OwnAddresses()
    with socket.socket() as listening:
        listening.bind(("0.0.0.0", 0))
        own.add([listening])
        own_port = listening.getsockname()[1]
        resolver = UpstreamResolver(
            {"api.anthropic.com": [("127.0.0.9", own_port)]}, [("127.0.0.1", port)], own
        )
        with pytest.raises(LoopDetected, match="would loop"):
            await resolver.lookup("api.anthropic.com", 443)
        assert await resolver.lookup("api.openai.com", 443) == [("127.0.0.9", 443)]


async def test_resolver_without_source_fails() -> None:
    resolver = UpstreamResolver({}, [], OwnAddresses())
    with pytest.raises(OSError, match=r"intercept\.nameservers"):
        await resolver.lookup("api.openai.com", 443)
