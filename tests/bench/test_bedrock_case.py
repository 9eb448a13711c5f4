"""The Bedrock streamed case: its checks, its config, and requests through gateway and floor."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer
from floor_proxy import build_app as build_floor_app
from harness.bedrock import CONVERSE_STREAM_PATH, FAKE_AWS_ENV, MODEL_ID, provider_config
from harness.cases import (
    BEDROCK_STREAM,
    CASES,
    CHAT_STREAM,
    VIRTUAL_KEY,
    GatewayContext,
    bedrock_gateway_config,
)
from harness.eventstream import (
    CONVERSE_CONTENT_PARTS,
    CONVERSE_STREAM_FRAMES,
    CONVERSE_STREAM_SUFFIX,
    encode_event,
)
from loadgen import LoadSettings, run_open_loop
from mock_upstream import CONTENT_PARTS, HttpRequest, UpstreamState, make_converse_stream_route
from mock_upstream import serve as serve_upstream
from run import _exit_code

from tests.bench.conftest import BENCH_DIR

BEDROCK_CASE = next(case for case in CASES if case.name == "gateway-bedrock-stream")
CONVERSE_BODY = b"".join(CONVERSE_STREAM_FRAMES)
check_converse = BEDROCK_STREAM.upstream_request.check


# --- the reply and its check ------------------------------------------------------------


def test_converse_parts_join_to_openai_text() -> None:
    assert len(CONVERSE_CONTENT_PARTS) == 20
    assert "".join(CONVERSE_CONTENT_PARTS) == "".join(CONTENT_PARTS)


def test_check_accepts_mock_reply() -> None:
    assert check_converse(CONVERSE_BODY) is None


def _other_text_frames() -> bytes:
    delta = orjson.dumps({"contentBlockIndex": 0, "delta": {"text": "Something else."}})
    frames = list(CONVERSE_STREAM_FRAMES)
    frames[1:21] = [encode_event("contentBlockDelta", delta)]
    return b"".join(frames)


def _corrupted() -> bytes:
    body = bytearray(CONVERSE_BODY)
    body[len(CONVERSE_STREAM_FRAMES[0]) + 40] ^= 0x01  # inside the second frame's payload
    return bytes(body)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"".join(CONVERSE_STREAM_FRAMES[:-1]), "does not end with a metadata event"),
        (b"".join(CONVERSE_STREAM_FRAMES[1:]), "does not start with messageStart"),
        (CONVERSE_BODY[:-7], "bytes after the last whole event-stream frame"),
        (CONVERSE_BODY + b"\x00\x00", "bytes after the last whole event-stream frame"),
        (_corrupted(), "ChecksumMismatch"),
        (_other_text_frames(), "unexpected streamed text"),
        (b"", "does not start with messageStart"),
    ],
)
def test_check_rejects_broken_stream(body: bytes, problem: str) -> None:
    found = check_converse(body)
    assert found is not None
    assert problem in found


def test_check_rejects_missing_message_stop() -> None:
    frames = [frame for frame in CONVERSE_STREAM_FRAMES if b"messageStop" not in frame]
    assert len(frames) == len(CONVERSE_STREAM_FRAMES) - 1
    found = check_converse(b"".join(frames))
    assert found is not None
    assert "no messageStop" in found


def test_suffix_survives_loadgen_argument() -> None:
    # run.py passes the suffix to loadgen.py as text; loadgen encodes it back to UTF-8.
    text = CONVERSE_STREAM_SUFFIX.decode("ascii")
    assert text.rstrip().encode() == CONVERSE_STREAM_SUFFIX
    assert CONVERSE_BODY.endswith(CONVERSE_STREAM_SUFFIX)
    assert BEDROCK_STREAM.upstream_request.expect_suffix == CONVERSE_STREAM_SUFFIX


# --- the case and its config -----------------------------------------------------------


def test_workload_requests() -> None:
    upstream_request = BEDROCK_STREAM.upstream_request
    assert upstream_request.path == CONVERSE_STREAM_PATH
    assert "%3A0/converse-stream" in upstream_request.path
    assert BEDROCK_STREAM.gateway_request is CHAT_STREAM.gateway_request


def test_case_env_has_fake_credentials() -> None:
    assert BEDROCK_CASE.workload is BEDROCK_STREAM
    assert BEDROCK_CASE.env["AWS_ACCESS_KEY_ID"].startswith("AKIDBENCHFAKE")
    assert "fake" in BEDROCK_CASE.env["AWS_SECRET_ACCESS_KEY"]
    assert BEDROCK_CASE.env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert BEDROCK_CASE.env["AWS_SESSION_TOKEN"] == ""
    assert BEDROCK_CASE.targets_enforced is False


def test_config_accepted_by_gateway(tmp_path: Path) -> None:
    schema = pytest.importorskip("smartflow.config.schema")
    context = GatewayContext(port=7999, upstream_url="http://127.0.0.1:9001", workdir=tmp_path)
    config = schema.parse_config(BEDROCK_CASE.build_config(context))
    provider = config.providers["bedrock"]
    assert provider.type == "bedrock"
    assert provider.region == "us-east-1"
    assert provider.base_url == "http://127.0.0.1:9001"
    deployment = config.models["bench-model"][0]
    assert (deployment.provider, deployment.model) == ("bedrock", MODEL_ID)
    assert config.server.port == 7999
    assert config.state_dir == str(tmp_path / "state")


@pytest.mark.parametrize(
    "url", ["http://localhost:9001", "http://10.0.0.1:9001", "http://[::1]:9001", "no-url"]
)
def test_provider_endpoint_must_be_loopback(url: str) -> None:
    with pytest.raises(ValueError, match=r"not on 127\.0\.0\.1"):
        provider_config(url)


def test_check_ignores_informational_cases() -> None:
    def case(enforced: bool, passed: bool) -> dict[str, object]:
        return {"targets_enforced": enforced, "comparison": {"pass": passed}}

    assert _exit_code({"cases": [case(True, True), case(False, False)]}, check=True) == 0
    assert _exit_code({"cases": [case(True, False), case(False, True)]}, check=True) == 3
    assert _exit_code({"cases": [case(True, False)]}, check=False) == 0


# --- requests through the gateway, the floor and the load generator ----------------------


@pytest.fixture
async def recording_upstream() -> AsyncIterator[tuple[str, list[HttpRequest]]]:
    """Run the mock upstream and record each ConverseStream request it serves."""
    state = UpstreamState()
    serve_converse_stream = make_converse_stream_route(state)
    seen: list[HttpRequest] = []

    def record(request: HttpRequest) -> list[bytes]:
        seen.append(request)
        return serve_converse_stream(request)

    state.model_routes["converse-stream"] = record
    running = await serve_upstream("127.0.0.1", 0, state)
    try:
        yield f"http://127.0.0.1:{running.port}", seen
    finally:
        await running.close()


async def _post(url: str, body: bytes) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {VIRTUAL_KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers=headers) as response:
            return response.status, await response.read()


async def test_gateway_sends_floor_request(
    recording_upstream: tuple[str, list[HttpRequest]], tmp_path: Path
) -> None:
    schema = pytest.importorskip("smartflow.config.schema")
    app_module = pytest.importorskip("smartflow.gateway.app")
    upstream_url, seen = recording_upstream
    context = GatewayContext(port=0, upstream_url=upstream_url, workdir=tmp_path)
    config = schema.parse_config(bedrock_gateway_config(context))
    app = app_module.build_app(config, environ=dict(BEDROCK_CASE.env))
    gateway = await app_module.start_gateway(app, "127.0.0.1", 0)
    try:
        request = BEDROCK_STREAM.gateway_request
        status, body = await _post(gateway.url + request.path, request.body)
    finally:
        await gateway.stop()
    assert status == 200
    assert request.check(body) is None
    # The case points the gateway's state at its own directory, never the working one.
    assert not Path(".smartflow").exists()
    assert len(seen) == 1
    sent = seen[-1]
    # The floor sends the same request, so both get the same bytes back.
    assert sent.path == BEDROCK_STREAM.upstream_request.path
    assert orjson.loads(sent.body) == orjson.loads(BEDROCK_STREAM.upstream_request.body)
    access_key = FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"]
    authorization = sent.headers["authorization"]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={access_key}/")
    assert "/us-east-1/bedrock/aws4_request" in authorization
    assert "x-amz-security-token" not in sent.headers


async def test_floor_forwards_event_stream(
    recording_upstream: tuple[str, list[HttpRequest]],
) -> None:
    upstream_url, seen = recording_upstream
    server = TestServer(build_floor_app(upstream_url), host="127.0.0.1")
    await server.start_server()
    try:
        request = BEDROCK_STREAM.upstream_request
        status, body = await _post(str(server.make_url(request.path)), request.body)
    finally:
        await server.close()
    assert status == 200
    assert body == CONVERSE_BODY
    assert request.check(body) is None
    assert seen[-1].body == request.body


async def test_loadgen_checks_event_stream_end(
    recording_upstream: tuple[str, list[HttpRequest]],
) -> None:
    upstream_url, _ = recording_upstream
    request = BEDROCK_STREAM.upstream_request
    settings = LoadSettings(
        url=upstream_url + request.path,
        body=request.body,
        headers={"Content-Type": "application/json"},
        rate=100.0,
        duration_s=0.2,
        warmup_s=0.0,
        expect_suffix=CONVERSE_STREAM_SUFFIX.decode().encode(),
    )
    summary = await run_open_loop(settings)
    assert summary["ok"] == 20
    assert summary["errors"] == {}


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_run_bedrock_case_with_gateway(tmp_path: Path) -> None:
    command = [
        sys.executable, str(BENCH_DIR / "run.py"), "--case", "gateway-bedrock-stream", "--check",
        "--rounds", "1", "--wrk-duration", "1", "--wrk-warmup", "0", "--latency-duration", "1",
        "--latency-warmup", "0.2", "--rate", "100", "--out-dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    assert "== streamed from Bedrock (bedrock-stream) ==" in result.stdout
    assert "gateway-bedrock-stream against the floor (informational" in result.stdout
    outputs = list(tmp_path.glob("gateway-*.json"))
    assert len(outputs) == 1
    saved = orjson.loads(outputs[0].read_bytes())
    case = saved["cases"][0]
    assert case["targets_enforced"] is False
    assert case["gateway"]["latency"]["ok"] == 100
    assert case["gateway"]["saturation"]["rps"] > 0
    assert case["comparison"]["targets"]["errors"]["pass"] is True
    floor = saved["workloads"]["bedrock-stream"]["floor"]
    assert floor["latency"]["ok"] == 100
