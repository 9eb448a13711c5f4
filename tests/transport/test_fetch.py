"""The SSRF-guarded image fetcher: address checks, allow-lists, redirects and limits.

Every test that fetches runs in a loopback-only network namespace (see netns.py), so a
broken guard cannot send a packet off the machine. There, 10.0.0.1 and 169.254.169.254
are loopback addresses too, and servers listen on them to prove that nothing reached them.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import pytest

from smartflow.config.schema import ImageFetchSettings, parse_config
from smartflow.core.errors import ConfigError, InvalidRequest
from smartflow.transport.addresses import AddressPolicy, IPAddress, classify_address
from smartflow.transport.fetch import FetchedImage, ImageFetcher, sniff_image_type
from smartflow.transport.http import HTTPSettings, create_session
from tests.transport.imageserver import GIF, JPEG, PNG, STREAM_TOTAL_BYTES, WEBP, ImageServer
from tests.transport.netns import isolated

FIELD = "messages[0].content[1].image_url.url"
REQUEST_ID = "req-fetch-test"


# --- address classification (pure functions, no network) ---------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.0.9", "a loopback address"),
        ("10.0.0.1", "a private address"),
        ("172.16.5.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("169.254.170.2", "a cloud metadata address"),
        ("169.254.1.1", "a link-local address"),
        ("100.64.0.1", "a carrier-grade NAT address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("192.0.0.192", "a cloud metadata address"),
        ("0.0.0.0", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("239.255.255.250", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        ("198.18.0.1", "a reserved address"),
        ("192.0.2.10", "a reserved address"),
        ("::", "an unspecified address"),
        ("::1", "a loopback address"),
        ("fe80::1", "a link-local address"),
        ("fc00::1", "a unique local address"),
        ("fd12:3456::1", "a unique local address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("ff02::1", "a multicast address"),
        ("2001:db8::1", "a reserved address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("::ffff:169.254.169.254", "a cloud metadata address"),
        ("::127.0.0.1", "a reserved address"),
        ("64:ff9b::a00:1", "a private address inside a NAT64 address"),
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address inside a NAT64 address"),
        ("2002:7f00:1::1", "a loopback address inside a 6to4 address"),
        ("64:ff9b:1::1", "a reserved address"),
    ],
)
def test_classify_blocked_address(address: str, reason: str) -> None:
    blocked = classify_address(ipaddress.ip_address(address))
    assert blocked is not None
    assert blocked.reason == reason
    assert blocked.metadata == ("metadata" in reason)


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808"]
)
def test_classify_public_address(address: str) -> None:
    assert classify_address(ipaddress.ip_address(address)) is None


def _ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def test_policy_allow_cidrs() -> None:
    policy = AddressPolicy(allow_cidrs=["10.0.0.0/8", "fd12::/16"])
    assert policy.check("images.internal", _ip("10.1.2.3")) is None
    assert policy.check("images.internal", _ip("::ffff:10.1.2.3")) is None
    assert policy.check("images.internal", _ip("fd12::5")) is None
    blocked = policy.check("images.internal", _ip("192.168.0.1"))
    assert blocked is not None
    assert blocked.reason == "a private address"


def test_policy_metadata_needs_single_address() -> None:
    broad = AddressPolicy(allow_hosts=["metadata.internal"], allow_cidrs=["169.254.0.0/16"])
    assert broad.check("printer.local", _ip("169.254.1.1")) is None
    assert broad.check("metadata.internal", _ip("169.254.169.254")) is not None
    assert broad.check("x", _ip("::ffff:169.254.169.254")) is not None
    exact = AddressPolicy(allow_cidrs=["169.254.169.254/32"])
    assert exact.check("x", _ip("169.254.169.254")) is None
    assert exact.check("x", _ip("169.254.170.2")) is not None


def test_policy_allow_hosts() -> None:
    policy = AddressPolicy(allow_hosts=["images.internal", "*.corp.example"])
    assert policy.check("images.internal", _ip("10.0.0.7")) is None
    assert policy.check("IMAGES.internal.", _ip("127.0.0.1")) is None
    assert policy.check("cdn.corp.example", _ip("192.168.4.4")) is None
    assert policy.check("a.b.corp.example", _ip("192.168.4.4")) is None
    assert policy.check("corp.example", _ip("192.168.4.4")) is not None
    assert policy.check("evilcorp.example", _ip("192.168.4.4")) is not None
    assert policy.check("other.internal", _ip("10.0.0.7")) is not None


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (GIF, "image/gif"),
        (WEBP, "image/webp"),
        (b"GIF87a......", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        (b"", None),
    ],
)
def test_sniff_image_type(data: bytes, media_type: str | None) -> None:
    assert sniff_image_type(data) == media_type


def test_config_defaults() -> None:
    settings = parse_config({}).image_fetch
    assert settings.allow_hosts == []
    assert settings.allow_cidrs == []
    assert settings.max_bytes == 5 * 1024 * 1024
    assert settings.timeout_s == 10.0
    assert settings.max_redirects == 3
    assert settings.max_images == 20


def test_config_normalises_lists() -> None:
    settings = parse_config(
        {
            "image_fetch": {
                "allow_hosts": ["Images.Internal.", "*.bücher.example"],
                "allow_cidrs": ["fd12:0::/16"],
            }
        }
    ).image_fetch
    assert settings.allow_hosts == ["images.internal", "*.xn--bcher-kva.example"]
    assert settings.allow_cidrs == ["fd12::/16"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"allow_cidrs": ["10.0.0.1/8"]}, "has host bits set"),
        ({"allow_cidrs": ["images.internal"]}, "is not a network in CIDR form"),
        ({"allow_hosts": ["10.0.0.1"]}, "list IP addresses in 'allow_cidrs'"),
        ({"allow_hosts": ["http://images.internal/"]}, "is not a host name"),
        ({"allow_hosts": ["*"]}, "is not a host name"),
        ({"max_bytes": 0}, "image_fetch.max_bytes"),
        ({"max_redirects": 21}, "image_fetch.max_redirects"),
        ({"allow_all": True}, "image_fetch.allow_all"),
    ],
)
def test_config_rejects(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"image_fetch": section})
    assert message in str(caught.value)


# --- helpers for the isolated tests --------------------------------------------------------


@asynccontextmanager
async def gateway_session() -> AsyncIterator[aiohttp.ClientSession]:
    """Yield a session built like the gateway's own."""
    session = create_session(HTTPSettings(connect_timeout=2.0, read_timeout=5.0))
    try:
        yield session
    finally:
        await session.close()


def fetcher(**settings: Any) -> ImageFetcher:
    return ImageFetcher(ImageFetchSettings(**settings))


async def fetch(
    image_fetcher: ImageFetcher, session: aiohttp.ClientSession, url: str
) -> FetchedImage:
    return await image_fetcher.fetch(session, url, field=FIELD, request_id=REQUEST_ID)


async def expect_rejected(
    image_fetcher: ImageFetcher, session: aiohttp.ClientSession, url: str, reason: str
) -> InvalidRequest:
    """Check that fetching ``url`` raises InvalidRequest naming FIELD and ``reason``."""
    try:
        await fetch(image_fetcher, session, url)
    except InvalidRequest as exc:
        assert exc.param == FIELD, exc.message
        assert f"The image URL at '{FIELD}' could not be used" in exc.message, exc.message
        assert reason in exc.message, f"{reason!r} not in {exc.message!r}"
        return exc
    raise AssertionError(f"{url} was fetched, but should have been rejected ({reason})")


@contextmanager
def captured_fetch_logs() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.DEBUG)
    logger = logging.getLogger("smartflow.transport.fetch")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def fixed_resolver(answers: dict[str, list[str]], calls: list[str] | None = None) -> Any:
    """Return a resolver that resolves only the names in ``answers`` and records each lookup."""

    async def resolve(host: str, port: int) -> list[IPAddress]:
        if calls is not None:
            calls.append(host)
        if host not in answers:
            raise OSError(f"{host} is not in the test resolver")
        return [ipaddress.ip_address(a) for a in answers[host]]

    return resolve


# --- fetching (isolated) ----------------------------------------------------------------


@isolated
async def test_fetch_allowed_images() -> None:
    images = fetcher(allow_cidrs=["127.0.0.0/8"])
    async with ImageServer() as server, gateway_session() as session:
        for path, data, media_type in [
            ("cat.png", PNG, "image/png"),
            ("cat.jpg", JPEG, "image/jpeg"),
            ("cat.gif", GIF, "image/gif"),
            ("cat.webp", WEBP, "image/webp"),
            ("mislabelled.png", JPEG, "image/jpeg"),
        ]:
            image = await fetch(images, session, f"{server.url}/{path}?size=small")
            assert image.data == data, path
            assert image.media_type == media_type, path
        assert server.hits[0].path_qs == "/cat.png?size=small"
        assert server.hits[0].host_header == server.url.removeprefix("http://")


@isolated
async def test_reject_internal_addresses() -> None:
    images = fetcher()
    async with (
        ImageServer("127.0.0.1") as loopback,
        ImageServer("10.0.0.1") as private,
        ImageServer("169.254.169.254") as metadata,
        gateway_session() as session,
    ):
        for server, reason in [
            (loopback, "its host is a loopback address"),
            (private, "its host is a private address"),
            (metadata, "its host is a cloud metadata address"),
        ]:
            await expect_rejected(images, session, f"{server.url}/cat.png", f"{reason}, which")
            assert server.hits == [], server.url
        # A host name that resolves to loopback is rejected like the address itself.
        port = loopback.url.rsplit(":", 1)[1]
        await expect_rejected(
            images, session, f"http://localhost:{port}/cat.png", "a loopback address"
        )
        assert loopback.hits == []


@isolated
async def test_allow_list_opens_addresses() -> None:
    async with (
        ImageServer("127.0.0.1") as loopback,
        ImageServer("10.0.0.1") as private,
        ImageServer("169.254.169.254") as metadata,
        gateway_session() as session,
    ):
        opened = fetcher(allow_cidrs=["127.0.0.0/8", "10.0.0.1/32"])
        for server in (loopback, private):
            assert (await fetch(opened, session, f"{server.url}/cat.png")).data == PNG

        broad = fetcher(allow_cidrs=["169.254.0.0/16"])
        await expect_rejected(broad, session, f"{metadata.url}/cat.png", "a cloud metadata address")
        port = metadata.url.rsplit(":", 1)[1]
        by_name = ImageFetcher(
            ImageFetchSettings(allow_hosts=["metadata.test"]),
            resolver=fixed_resolver({"metadata.test": ["169.254.169.254"]}),
        )
        url = f"http://metadata.test:{port}/cat.png"
        await expect_rejected(by_name, session, url, "a cloud metadata address")
        assert metadata.hits == []

        exact = fetcher(allow_cidrs=["169.254.169.254/32"])
        assert (await fetch(exact, session, f"{metadata.url}/cat.png")).data == PNG
        assert len(metadata.hits) == 1


@isolated
async def test_redirect_to_internal_rejected() -> None:
    # The first hop is allowed by name only, so its redirects are checked on their own.
    images = fetcher(allow_hosts=["localhost"])
    async with (
        ImageServer("127.0.0.1") as start,
        ImageServer("127.0.0.1") as loopback,
        ImageServer("10.0.0.1") as private,
        ImageServer("169.254.169.254") as metadata,
        gateway_session() as session,
    ):
        port = start.url.rsplit(":", 1)[1]
        origin = f"http://localhost:{port}"
        assert (await fetch(images, session, f"{origin}/cat.png")).data == PNG
        for target, reason in [
            (loopback, "a redirect leads to a loopback address"),
            (private, "a redirect leads to a private address"),
            (metadata, "a redirect leads to a cloud metadata address"),
        ]:
            await expect_rejected(
                images, session, f"{origin}/redirect?to={target.url}/cat.png", reason
            )
            assert target.hits == [], target.url
        assert len(start.hits) == 4

        opened = fetcher(allow_hosts=["localhost"], allow_cidrs=["10.0.0.1/32"])
        image = await fetch(opened, session, f"{origin}/redirect?to={private.url}/cat.png")
        assert image.data == PNG
        assert [hit.path_qs for hit in private.hits] == ["/cat.png"]


@isolated
async def test_redirect_limits() -> None:
    async with ImageServer() as server, gateway_session() as session:
        images = fetcher(allow_cidrs=["127.0.0.0/8"], max_redirects=2)
        await expect_rejected(
            images, session, f"{server.url}/loop", "it redirects more than 2 times"
        )
        assert len(server.hits) == 3
        await expect_rejected(
            images, session, f"{server.url}/no-location", "HTTP 302 with no Location"
        )
        await expect_rejected(
            images,
            session,
            f"{server.url}/redirect?to=file:///etc/passwd",
            "a redirect was rejected: only http and https URLs are fetched",
        )
        await expect_rejected(
            images,
            session,
            f"{server.url}/bad-location",
            "a redirect has an invalid Location",
        )
        direct = fetcher(allow_cidrs=["127.0.0.0/8"], max_redirects=0)
        await expect_rejected(
            direct, session, f"{server.url}/redirect?to=/cat.png", "more than 0 times"
        )
        relative = await fetch(images, session, f"{server.url}/redirect?to=/cat.gif")
        assert relative.media_type == "image/gif"


@isolated
async def test_connect_to_checked_address() -> None:
    async with ImageServer() as server, gateway_session() as session:
        port = server.url.rsplit(":", 1)[1]
        calls: list[str] = []
        # No DNS server exists in the namespace, so only the checked answer can be used.
        resolver = fixed_resolver(
            {
                "images.test": ["127.0.0.1"],
                "dual.test": ["::1", "127.0.0.1"],
                "mixed.test": ["127.0.0.1", "10.0.0.1"],
            },
            calls,
        )
        images = ImageFetcher(
            ImageFetchSettings(allow_hosts=["images.test", "dual.test"]), resolver=resolver
        )
        image = await fetch(images, session, f"http://images.test:{port}/cat.png")
        assert image.data == PNG
        assert calls == ["images.test"]
        assert server.hits[-1].host_header == f"images.test:{port}"

        # The server listens on 127.0.0.1 only, so the fetch moves on from ::1.
        image = await fetch(images, session, f"http://dual.test:{port}/cat.png")
        assert image.data == PNG
        assert server.hits[-1].host_header == f"dual.test:{port}"

        # One blocked address rejects the host, whichever address comes first.
        loopback_only = ImageFetcher(
            ImageFetchSettings(allow_cidrs=["127.0.0.0/8"]), resolver=resolver
        )
        hits = len(server.hits)
        await expect_rejected(
            loopback_only, session, f"http://mixed.test:{port}/cat.png", "a private address"
        )
        assert len(server.hits) == hits

        await expect_rejected(
            fetcher(), session, "http://no-such-host.invalid/cat.png", "could not be resolved"
        )
        closed = ImageFetcher(
            ImageFetchSettings(allow_hosts=["images.test"]),
            resolver=fixed_resolver({"images.test": ["127.0.0.1", "10.0.0.1"]}),
        )
        rejected = await expect_rejected(
            closed,
            session,
            "http://images.test:9/cat.png",
            "the connection to its host failed (Connection refused)",
        )
        # The error message does not name the addresses that the name resolved to.
        assert "127.0.0.1" not in rejected.message
        assert "10.0.0.1" not in rejected.message


@isolated
async def test_url_forms_rejected() -> None:
    images = fetcher()
    async with ImageServer() as server, gateway_session() as session:
        port = server.url.rsplit(":", 1)[1]
        for url, reason in [
            ("ftp://127.0.0.1/cat.png", "only http and https URLs are fetched, not ftp"),
            ("file:///etc/passwd", "only http and https URLs are fetched, not file"),
            (f"data:image/png;base64,{base64.b64encode(PNG).decode()}", "not data"),
            ("http:///cat.png", "the URL has no host"),
            (f"http://user:secret@127.0.0.1:{port}/cat.png", "with a user name or password"),
            (f"http://2130706433:{port}/cat.png", "a loopback address"),
            (f"http://0x7f.1:{port}/cat.png", "a loopback address"),
            (f"http://127.1:{port}/cat.png", "a loopback address"),
            (f"http://[::ffff:127.0.0.1]:{port}/cat.png", "a loopback address"),
            (f"http://[::1]:{port}/cat.png", "a loopback address"),
            (f"http://0.0.0.0:{port}/cat.png", "an unspecified address"),
        ]:
            await expect_rejected(images, session, url, reason)
        assert server.hits == []


@isolated
async def test_response_limits() -> None:
    images = fetcher(allow_cidrs=["127.0.0.0/8"], max_bytes=64 * 1024, timeout_s=1.0)
    async with ImageServer() as server, gateway_session() as session:
        base = server.url
        for path, reason in [
            ("page.html", "its content type is 'text/html', not PNG, JPEG, GIF or WebP"),
            ("untyped", "its content type is 'application/octet-stream'"),
            (
                "fake.png",
                "its bytes are not a PNG, JPEG, GIF or WebP image, although the server "
                "labelled them image/png",
            ),
            ("status/404", "the server returned HTTP 404"),
            ("status/500", "the server returned HTTP 500"),
            ("declared-large.png", "it is larger than the limit of 65536 bytes"),
            ("endless.png", "it is larger than the limit of 65536 bytes"),
            ("slow.png", "fetching it took longer than the limit of 1 s"),
        ]:
            await expect_rejected(images, session, f"{base}/{path}", reason)
        # Reading stopped at the limit: the server could not send its whole body.
        assert server.streamed_bytes < STREAM_TOTAL_BYTES


@isolated
async def test_rejection_log_omits_path_and_query() -> None:
    images = fetcher()
    async with ImageServer() as server, gateway_session() as session:
        with captured_fetch_logs() as records:
            url = f"{server.url}/private/cat.png?X-Amz-Signature=sig-value-0123"
            await expect_rejected(images, session, url, "a loopback address")
        warnings = [r for r in records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        line = warnings[0].getMessage()
        assert REQUEST_ID in line
        assert "host 127.0.0.1" in line
        assert FIELD in line
        assert "sig-value-0123" not in line
        assert "/private/cat.png" not in line
