"""OTLP trace export of a running gateway, received by a real OTLP/HTTP receiver on
127.0.0.1 and driven by the official openai SDK through the OpenAI simulator."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from smartflow.config.schema import ImageFetchSettings, parse_config
from smartflow.core.errors import ConfigError
from smartflow.gateway.app import RunningGateway, build_app, start_gateway
from smartflow.sim.openai import OpenAISimulator
from smartflow.telemetry.tracing import GatewayTracer, parse_headers
from smartflow.transport.fetch import ImageFetcher
from tests.conftest import PROVIDER_KEY, VIRTUAL_KEY, free_port, stack_config
from tests.transport.imageserver import ImageServer

CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
PROMPT = "Summarise the quarterly figures for Ada Lovelace"
COLLECTOR_KEY = "collector-test-key"


@dataclass
class ReceivedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass
class OtlpReceiver:
    """An OTLP/HTTP receiver that decodes ``POST /v1/traces`` protobuf bodies."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        self.headers.append(dict(request.headers))
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource_spans in message.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(_received(span, resource))
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")


def _received(span: Span, resource: dict[str, Any]) -> ReceivedSpan:
    return ReceivedSpan(
        name=span.name,
        kind=span.kind,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        attributes={a.key: _value(a.value) for a in span.attributes},
        resource=resource,
        status_code=span.status.code,
    )


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    server = OtlpReceiver()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def simulator() -> AsyncIterator[OpenAISimulator]:
    sim = OpenAISimulator(api_keys=[PROVIDER_KEY])
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def start_traced(
    sim_url: str, otlp: dict[str, Any] | None, environ: dict[str, str] | None = None
) -> RunningGateway:
    overrides: dict[str, Any] = {"server": {"access_log": False, "instance": "gw-1", "site": "hq"}}
    if otlp is not None:
        overrides["telemetry"] = {"otlp": otlp}
    config = parse_config(stack_config(sim_url, sim_url, sim_url, **overrides))
    env = {"TEST_PROVIDER_KEY": PROVIDER_KEY, **(environ or {})}
    return await start_gateway(build_app(config, environ=env), "127.0.0.1", 0)


def client(gateway: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=VIRTUAL_KEY, max_retries=0)


async def send_both(sdk: openai.AsyncOpenAI) -> None:
    """Send a non-streamed request with the caller's traceparent, then a streamed one."""
    completion = await sdk.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": PROMPT}],
        temperature=0.3,
        top_p=0.9,
        max_tokens=50,
        extra_headers={"traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"},
    )
    assert completion.choices[0].message.content
    stream = await sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None


def _one(spans: list[ReceivedSpan], **match: Any) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one span with {match}, got {[s.name for s in found]}"
    return found[0]


SERVER = Span.SpanKind.SPAN_KIND_SERVER
CLIENT = Span.SpanKind.SPAN_KIND_CLIENT


async def test_spans_carry_genai_attributes(
    receiver: OtlpReceiver, simulator: OpenAISimulator
) -> None:
    otlp = {
        "endpoint": receiver.url,
        "service_name": "gw-test",
        "headers_env": "TEST_OTLP_HEADERS",
    }
    gateway = await start_traced(
        simulator.base_url, otlp, {"TEST_OTLP_HEADERS": f"x-collector-key={COLLECTOR_KEY}"}
    )
    try:
        async with client(gateway) as sdk:
            await send_both(sdk)
    finally:
        await gateway.stop()  # flushes the span queue

    spans = receiver.spans
    assert len(spans) == 4, [s.name for s in spans]
    assert all(h.get("x-collector-key") == COLLECTOR_KEY for h in receiver.headers)

    server = _one(spans, kind=SERVER, trace_id=CALLER_TRACE_ID)
    assert server.parent_span_id == CALLER_SPAN_ID
    assert server.name == "POST /v1/chat/completions"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/v1/chat/completions"
    assert server.attributes["smartflow.request_id"].startswith("req_")
    assert server.resource["service.name"] == "gw-test"
    assert server.resource["service.instance.id"] == "gw-1"

    chat = _one(spans, kind=CLIENT, trace_id=CALLER_TRACE_ID)
    assert chat.parent_span_id == server.span_id
    assert chat.name == "chat gpt-4o"
    attributes = chat.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o"
    assert attributes["gen_ai.response.model"].startswith("gpt-4o")
    assert attributes["gen_ai.request.temperature"] == pytest.approx(0.3)
    assert attributes["gen_ai.request.top_p"] == pytest.approx(0.9)
    assert attributes["gen_ai.request.max_tokens"] == 50
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] in (["stop"], ["length"])
    assert attributes["gen_ai.request.stream"] is False
    assert attributes["smartflow.request_id"] == server.attributes["smartflow.request_id"]
    assert attributes["smartflow.instance"] == "gw-1"
    assert attributes["smartflow.site"] == "hq"
    assert attributes["smartflow.deployment"] == "openai/gpt-4o"
    assert attributes["smartflow.fallbacks"] == 0
    assert "error.type" not in attributes

    # The upstream request carries the caller's trace id, with the CLIENT span as parent.
    upstream = [r for r in simulator.requests if r.body.get("model") == "gpt-4o"]
    assert len(upstream) == 1
    version, trace_id, parent_id, flags = upstream[0].headers["traceparent"].split("-")
    assert (version, trace_id, parent_id, flags) == ("00", CALLER_TRACE_ID, chat.span_id, "01")

    stream_server = _one([s for s in spans if s.trace_id != CALLER_TRACE_ID], kind=SERVER)
    assert stream_server.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert stream_server.trace_id != CALLER_TRACE_ID
    assert stream_server.parent_span_id == ""
    stream_chat = _one(spans, kind=CLIENT, trace_id=stream_server.trace_id)
    assert stream_chat.name == "chat gpt-4o-mini"
    assert stream_chat.attributes["gen_ai.request.stream"] is True
    assert stream_chat.attributes["gen_ai.usage.output_tokens"] > 0
    assert stream_chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert "gen_ai.request.temperature" not in stream_chat.attributes
    streamed = [r for r in simulator.requests if r.body.get("model") == "gpt-4o-mini"]
    assert streamed[0].headers["traceparent"].split("-")[1] == stream_server.trace_id

    # Names, counts and codes only: the prompt text appears in no attribute.
    for span in spans:
        for value in span.attributes.values():
            assert "Lovelace" not in str(value), span.name


async def test_unreachable_collector_never_fails_requests(
    simulator: OpenAISimulator, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    otlp = {"endpoint": endpoint, "timeout_s": 0.5}
    gateway = await start_traced(simulator.base_url, otlp)
    caplog.set_level(logging.WARNING, logger="smartflow.telemetry.tracing")
    try:
        started = time.perf_counter()
        async with client(gateway) as sdk:
            await send_both(sdk)
        assert time.perf_counter() - started < 5
    finally:
        await gateway.stop()
    upstream = list(simulator.requests)
    assert len(upstream) == 2
    assert all("traceparent" in r.headers for r in upstream)
    failures = [r for r in caplog.records if "export to" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]
    assert endpoint + "/v1/traces" in failures[0].getMessage()
    assert "4 spans lost" in failures[0].getMessage()


async def test_tracing_off_sends_no_traceparent(simulator: OpenAISimulator) -> None:
    gateway = await start_traced(simulator.base_url, None)
    try:
        async with client(gateway) as sdk:
            await send_both(sdk)
    finally:
        await gateway.stop()
    upstream = list(simulator.requests)
    assert len(upstream) == 2
    assert not any("traceparent" in r.headers for r in upstream)


async def test_zero_sample_ratio_keeps_caller_decision(
    receiver: OtlpReceiver, simulator: OpenAISimulator
) -> None:
    gateway = await start_traced(
        simulator.base_url, {"endpoint": receiver.url, "sample_ratio": 0.0}
    )
    try:
        async with client(gateway) as sdk:
            await send_both(sdk)
    finally:
        await gateway.stop()
    # The caller sampled its trace, so that request is recorded; the other is not.
    assert {s.trace_id for s in receiver.spans} == {CALLER_TRACE_ID}
    assert len(receiver.spans) == 2
    streamed = [r for r in simulator.requests if r.body.get("model") == "gpt-4o-mini"]
    flags = streamed[0].headers["traceparent"].rsplit("-", 1)[1]
    assert int(flags, 16) & 1 == 0  # the sampled bit is clear


def test_parse_headers() -> None:
    assert parse_headers("a=1, b=x%3Dy,") == {"a": "1", "b": "x=y"}
    with pytest.raises(ValueError, match="item 2"):
        parse_headers("a=1,nonsense")


def test_headers_env_must_exist() -> None:
    config = parse_config(
        stack_config(
            "http://127.0.0.1:9",
            "http://127.0.0.1:9",
            "http://127.0.0.1:9",
            telemetry={"otlp": {"endpoint": "http://127.0.0.1:4318", "headers_env": "NOPE_VAR"}},
        )
    )
    with pytest.raises(ConfigError, match="NOPE_VAR is not set"):
        build_app(config, environ={"TEST_PROVIDER_KEY": PROVIDER_KEY})


async def test_image_fetch_gets_no_traceparent() -> None:
    # A traced handler fetches an image and then calls its upstream on one session, as the
    # gateway does for providers that take image bytes.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = GatewayTracer(provider, instance="gw-1", site="hq")
    fetcher = ImageFetcher(ImageFetchSettings(allow_cidrs=["127.0.0.1/32"]))
    upstream_traceparents: list[str | None] = []

    async def upstream(request: web.Request) -> web.Response:
        upstream_traceparents.append(request.headers.get("traceparent"))
        return web.json_response({})

    upstream_app = web.Application()
    upstream_app.router.add_post("/call", upstream)
    async with (
        ImageServer() as images,
        TestServer(upstream_app, host="127.0.0.1") as upstream_server,
        aiohttp.ClientSession(trace_configs=[tracer.trace_config()]) as session,
    ):

        async def handler(request: web.Request) -> web.Response:
            image = await fetcher.fetch(
                session, f"{images.url}/cat.png", field="image_url", request_id="req-1"
            )
            async with session.post(upstream_server.make_url("/call")) as response:
                await response.read()
            return web.json_response({"media_type": image.media_type})

        app = web.Application(middlewares=[tracer.middleware])
        app.router.add_post("/v1/chat/completions", handler)
        async with TestServer(app, host="127.0.0.1") as gateway, aiohttp.ClientSession() as caller:
            async with caller.post(gateway.make_url("/v1/chat/completions")) as response:
                assert response.status == 200
    provider.shutdown()

    assert [hit.path_qs for hit in images.hits] == ["/cat.png"]
    assert images.hits[0].traceparent is None
    (traceparent,) = upstream_traceparents
    assert traceparent is not None
    spans = {span.name: span for span in exporter.get_finished_spans()}
    client = spans["chat"]
    assert traceparent.split("-")[2] == format(client.context.span_id, "016x")
