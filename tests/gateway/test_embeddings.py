"""POST /v1/embeddings through a running gateway to all five providers, judged by the openai SDK.

Every upstream is a simulator on 127.0.0.1: OpenAI, Azure OpenAI, Bedrock (SigV4 checked
with botocore), Gemini and Cohere. All keys and AWS credentials are invented.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from botocore.credentials import Credentials  # type: ignore[import-untyped]

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.gateway.app import RunningGateway, build_app, start_gateway
from smartflow.gateway.embeddings import add_embedding_routes
from smartflow.gateway.handlers import Gateway
from smartflow.providers.anthropic import AnthropicProvider
from smartflow.providers.base import Provider, Secret
from smartflow.providers.bedrock import BedrockProvider
from smartflow.providers.cohere import CohereProvider
from smartflow.providers.gemini import GeminiProvider, VertexGeminiProvider
from smartflow.providers.openai import AzureOpenAIProvider, OpenAIProvider
from smartflow.sim.azure import AzureOpenAISimulator
from smartflow.sim.base import Fault, Simulator
from smartflow.sim.bedrock import BedrockSimulator
from smartflow.sim.cohere import CohereSimulator
from smartflow.sim.gemini import GeminiSimulator
from smartflow.sim.openai import OpenAISimulator
from smartflow.sim.script import count_tokens
from tests.conftest import VIRTUAL_KEY
from tests.gateway.clients import openai_client

PROVIDER_KEY = "embeddings-test-provider-key"
# Invented credentials in the AWS key format, valid only for the simulator.
ACCESS_KEY_ID = "AKIDSMARTFLOWEMBED01"
SECRET_ACCESS_KEY = "smartflow/embeddings/not-a-real-aws-key"
REGION = "us-east-1"
TEXTS = ["The quick brown fox", "jumps over the lazy dog", "Embeddings through a gateway"]

# Public model name: (provider, upstream model, native dimensions).
MODELS: dict[str, tuple[str, str, int]] = {
    "openai-small": ("openai", "text-embedding-3-small", 1536),
    "openai-ada": ("openai", "text-embedding-ada-002", 1536),
    "azure-small": ("azure", "text-embedding-3-small", 1536),
    "titan-v2": ("bedrock", "amazon.titan-embed-text-v2:0", 1024),
    "titan-v1": ("bedrock", "amazon.titan-embed-text-v1", 1536),
    "bedrock-cohere": ("bedrock", "cohere.embed-english-v3", 1024),
    "gemini-embedding": ("gemini", "gemini-embedding-001", 3072),
    "cohere-v4": ("cohere", "embed-v4.0", 1536),
    "cohere-v3": ("cohere", "embed-english-v3.0", 1024),
    "claude": ("anthropic", "claude-sonnet-4-5", 0),
    "vertex-embedding": ("vertex", "gemini-embedding-001", 3072),
}
# One model per provider and Bedrock body format, for the tests every provider must pass.
PER_PROVIDER = [
    "openai-small",
    "azure-small",
    "titan-v2",
    "bedrock-cohere",
    "gemini-embedding",
    "cohere-v4",
]
# Routes with more than one deployment: (provider, upstream model) in fallback order.
ROUTES: dict[str, list[tuple[str, str]]] = {
    "openai-then-azure": [
        ("openai", "text-embedding-3-small"),
        ("azure", "text-embedding-3-small"),
    ],
    "titan-then-openai": [
        ("bedrock", "amazon.titan-embed-text-v2:0"),
        ("openai", "text-embedding-3-small"),
    ],
}


@dataclass
class EmbeddingStack:
    url: str
    sims: dict[str, Simulator]
    gateway: RunningGateway

    def sim_of(self, model: str) -> Any:
        return self.sims[MODELS[model][0]]

    def request_count(self) -> int:
        return sum(len(sim.requests) for sim in self.sims.values())


def _gateway_config(providers: dict[str, Provider]) -> Any:
    models = {public: [{"provider": p, "model": m}] for public, (p, m, _) in MODELS.items()}
    for public, route in ROUTES.items():
        models[public] = [{"provider": p, "model": m} for p, m in route]
    return parse_config(
        {
            "server": {"access_log": False},
            # Placeholders: build_app uses the injected adapters of the same names.
            "providers": {name: {"type": "openai", "api_key_env": "UNUSED"} for name in providers},
            "models": models,
            "keys": [{"name": "test", "sha256": hash_key(VIRTUAL_KEY)}],
            "retry": {
                "attempts_per_deployment": 2,
                "backoff_initial_s": 0.01,
                "backoff_max_s": 0.05,
                "max_retry_after_s": 2,
            },
            "timeouts": {"connect_s": 2, "read_s": 5},
        }
    )


def _gateway_of(app: web.Application) -> Gateway:
    for route in app.router.routes():
        owner = getattr(route.handler, "__self__", None)
        if isinstance(owner, Gateway):
            return owner
    raise AssertionError("build_app registered no handler of a Gateway")


def _with_embeddings(app: web.Application) -> web.Application:
    """Add the embeddings route unless build_app has added it already."""
    paths = {route.resource.canonical for route in app.router.routes() if route.resource}
    if "/v1/embeddings" not in paths:
        add_embedding_routes(app, _gateway_of(app))
    return app


@pytest.fixture
async def stack() -> AsyncIterator[EmbeddingStack]:
    sims: dict[str, Simulator] = {
        "openai": OpenAISimulator(
            api_keys=[PROVIDER_KEY], extra_response_fields={"sim_extra": "kept"}
        ),
        "azure": AzureOpenAISimulator(api_keys=[PROVIDER_KEY]),
        "bedrock": BedrockSimulator(credentials={ACCESS_KEY_ID: SECRET_ACCESS_KEY}, region=REGION),
        "gemini": GeminiSimulator(api_keys=[PROVIDER_KEY]),
        "cohere": CohereSimulator(api_keys=[PROVIDER_KEY]),
    }
    urls = {name: await sim.start() for name, sim in sims.items()}
    key = Secret(PROVIDER_KEY)
    providers: dict[str, Provider] = {
        "openai": OpenAIProvider("openai", api_key=key, base_url=urls["openai"] + "/v1"),
        "azure": AzureOpenAIProvider(
            "azure", api_key=key, base_url=urls["azure"], api_version="2024-10-21"
        ),
        "bedrock": BedrockProvider(
            "bedrock",
            region=REGION,
            credentials=Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY),
            endpoint_url=urls["bedrock"],
        ),
        "gemini": GeminiProvider("gemini", api_key=key, base_url=urls["gemini"]),
        "cohere": CohereProvider("cohere", api_key=key, base_url=urls["cohere"]),
        # Never contacted: the gateway has no embeddings API for Anthropic or Vertex AI.
        "anthropic": AnthropicProvider("anthropic", api_key=key, base_url="http://127.0.0.1:9"),
        "vertex": VertexGeminiProvider(
            "vertex",
            project="test-project",
            location="us-central1",
            access_token=key,
            base_url="http://127.0.0.1:9",
        ),
    }
    app = _with_embeddings(build_app(_gateway_config(providers), environ={}, providers=providers))
    gateway = await start_gateway(app, "127.0.0.1", 0)
    try:
        yield EmbeddingStack(gateway.url, sims, gateway)
    finally:
        await gateway.stop()
        for sim in sims.values():
            await sim.stop()


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(value * value for value in vector))


def _decode(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def _expected_tokens(model: str, texts: list[str]) -> int:
    """The prompt tokens the simulator behind ``model`` reports, or the gateway's estimate."""
    provider = MODELS[model][0]
    if provider == "gemini":
        return sum(max(1, math.ceil(len(text) / 4)) for text in texts)
    if provider == "cohere":
        return sum(count_tokens(text) for text in texts)
    return sum(max(count_tokens(text), 1) for text in texts)


async def _embed_raw(url: str, **params: Any) -> tuple[Any, Any]:
    """Create embeddings with the SDK and return the parsed response and its headers."""
    raw = await openai_client(url).embeddings.with_raw_response.create(**params)
    return raw.parse(), raw.headers


# --- every provider -------------------------------------------------------------------


@pytest.mark.parametrize("model", PER_PROVIDER)
async def test_vectors_from_each_provider(stack: EmbeddingStack, model: str) -> None:
    # The SDK requests base64 when no encoding is given, and decodes it itself.
    response, headers = await _embed_raw(stack.url, model=model, input=TEXTS)

    assert response.object == "list"
    assert [item.index for item in response.data] == [0, 1, 2]
    native = MODELS[model][2]
    for item in response.data:
        assert isinstance(item.embedding, list)
        assert len(item.embedding) == native
        assert _norm(item.embedding) == pytest.approx(1.0, abs=1e-3)
    assert response.data[0].embedding != response.data[1].embedding
    assert response.usage.prompt_tokens == _expected_tokens(model, TEXTS)
    assert response.usage.total_tokens == response.usage.prompt_tokens
    provider, upstream, _ = MODELS[model]
    assert headers["x-smartflow-deployment"] == f"{provider}/{upstream}"
    estimated = headers.get("x-smartflow-token-count") == "estimate"
    assert estimated == (provider == "gemini")


@pytest.mark.parametrize("model", PER_PROVIDER)
async def test_float_and_base64_agree(stack: EmbeddingStack, model: str) -> None:
    client = openai_client(stack.url)
    floats = await client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
    encoded = await client.embeddings.create(model=model, input=TEXTS, encoding_format="base64")

    assert len(floats.data) == len(TEXTS)
    assert len(encoded.data) == len(TEXTS)
    for plain, packed in zip(floats.data, encoded.data, strict=True):
        # An explicit base64 request comes back undecoded: little-endian float32.
        embedding: Any = packed.embedding
        assert isinstance(embedding, str)
        decoded = _decode(embedding)
        assert len(decoded) == len(plain.embedding)
        assert decoded == pytest.approx(plain.embedding, abs=1e-6)


async def test_bedrock_and_gemini_bodies(stack: EmbeddingStack) -> None:
    client = openai_client(stack.url)
    await client.embeddings.create(model="titan-v2", input=TEXTS)
    await client.embeddings.create(model="gemini-embedding", input=TEXTS)

    titan = stack.sims["bedrock"].requests
    assert [entry.path for entry in titan] == ["/model/amazon.titan-embed-text-v2:0/invoke"] * 3
    assert sorted(entry.body["inputText"] for entry in titan) == sorted(TEXTS)
    assert all(entry.headers["authorization"].startswith("sha256:") for entry in titan)
    gemini = stack.sims["gemini"].requests[-1]
    assert gemini.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert gemini.body["requests"][0] == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": TEXTS[0]}]},
    }


async def test_cohere_bodies(stack: EmbeddingStack) -> None:
    client = openai_client(stack.url)
    await client.embeddings.create(model="cohere-v4", input=TEXTS)
    await client.embeddings.create(model="bedrock-cohere", input=TEXTS)

    direct = stack.sims["cohere"].requests[-1]
    assert direct.path == "/v2/embed"
    assert direct.body == {
        "model": "embed-v4.0",
        "texts": TEXTS,
        "input_type": "search_document",
        "embedding_types": ["float"],
    }
    bedrock = stack.sims["bedrock"].requests[-1]
    assert bedrock.path == "/model/cohere.embed-english-v3/invoke"
    assert bedrock.body == {
        "texts": TEXTS,
        "input_type": "search_document",
        "embedding_types": ["float"],
    }


async def test_input_type_reaches_cohere_and_gemini(stack: EmbeddingStack) -> None:
    client = openai_client(stack.url)
    extra = {"input_type": "search_query"}
    await client.embeddings.create(model="cohere-v4", input="a question", extra_body=extra)
    await client.embeddings.create(model="bedrock-cohere", input="a question", extra_body=extra)
    await client.embeddings.create(model="gemini-embedding", input="a question", extra_body=extra)

    assert stack.sims["cohere"].requests[-1].body["input_type"] == "search_query"
    assert stack.sims["bedrock"].requests[-1].body["input_type"] == "search_query"
    gemini = stack.sims["gemini"].requests[-1].body["requests"][0]
    assert gemini["taskType"] == "RETRIEVAL_QUERY"


# --- pass-through to OpenAI and Azure OpenAI -------------------------------------------


async def test_openai_passthrough_keeps_fields(stack: EmbeddingStack) -> None:
    raw = await openai_client(stack.url).embeddings.with_raw_response.create(
        model="openai-small", input="hello", extra_body={"custom_field": {"a": 1}}
    )
    response = raw.parse()

    received = stack.sims["openai"].requests[-1]
    assert received.path == "/v1/embeddings"
    assert received.body["model"] == "text-embedding-3-small"
    assert received.body["custom_field"] == {"a": 1}
    assert received.body["encoding_format"] == "base64"
    assert response.model == "text-embedding-3-small"
    assert (response.model_extra or {}).get("sim_extra") == "kept"


async def test_azure_deployment_url(stack: EmbeddingStack) -> None:
    await openai_client(stack.url).embeddings.create(model="azure-small", input="hello")

    received = stack.sims["azure"].requests[-1]
    assert received.path == "/openai/deployments/text-embedding-3-small/embeddings"
    assert received.query == {"api-version": "2024-10-21"}
    assert received.headers["api-key"].startswith("sha256:")


@pytest.mark.parametrize(
    ("tokens", "count"), [([1, 2, 3], 1), ([[1, 2], [3, 4, 5]], 2)], ids=["one", "two"]
)
async def test_token_arrays_to_openai(stack: EmbeddingStack, tokens: Any, count: int) -> None:
    response = await openai_client(stack.url).embeddings.create(model="openai-small", input=tokens)

    assert len(response.data) == count
    assert stack.sims["openai"].requests[-1].body["input"] == tokens


async def test_token_arrays_skip_translated(stack: EmbeddingStack) -> None:
    response, headers = await _embed_raw(stack.url, model="titan-then-openai", input=[1, 2, 3])

    assert len(response.data) == 1
    assert headers["x-smartflow-deployment"] == "openai/text-embedding-3-small"
    assert len(stack.sims["bedrock"].requests) == 0


@pytest.mark.parametrize("model", ["titan-v2", "gemini-embedding", "cohere-v4"])
async def test_token_arrays_rejected(stack: EmbeddingStack, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client(stack.url).embeddings.create(model=model, input=[[1, 2, 3]])

    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "input"
    assert "Token arrays" in error["message"]
    assert stack.request_count() == 0


# --- dimensions -------------------------------------------------------------------------

DIMENSIONS_FIELD = {
    "openai": "dimensions",
    "azure": "dimensions",
    "bedrock": "dimensions",
    "cohere": "output_dimension",
}


@pytest.mark.parametrize(
    ("model", "dimensions"),
    [
        ("openai-small", 256),
        ("azure-small", 512),
        ("titan-v2", 256),
        ("gemini-embedding", 768),
        ("cohere-v4", 512),
    ],
)
async def test_dimensions_honoured(stack: EmbeddingStack, model: str, dimensions: int) -> None:
    response = await openai_client(stack.url).embeddings.create(
        model=model, input=TEXTS[:2], dimensions=dimensions
    )

    assert [len(item.embedding) for item in response.data] == [dimensions, dimensions]
    provider = MODELS[model][0]
    body = stack.sim_of(model).requests[-1].body
    if provider == "gemini":
        assert body["requests"][0]["outputDimensionality"] == dimensions
    else:
        assert body[DIMENSIONS_FIELD[provider]] == dimensions


@pytest.mark.parametrize(
    ("model", "dimensions", "upstream_calls"),
    [
        ("titan-v1", 512, 0),
        ("titan-v2", 300, 0),
        ("bedrock-cohere", 512, 0),
        ("cohere-v3", 512, 0),
        ("openai-ada", 512, 1),
        ("gemini-embedding", 4000, 1),
    ],
)
async def test_dimensions_rejected(
    stack: EmbeddingStack, model: str, dimensions: int, upstream_calls: int
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client(stack.url).embeddings.create(
            model=model, input="hello", dimensions=dimensions
        )

    assert caught.value.status_code == 400
    error = caught.value.body
    assert isinstance(error, dict)
    assert "dimension" in error["message"]
    if upstream_calls == 0:
        # The gateway checks these limits itself and rejects without calling the provider.
        assert error["param"] == "dimensions"
    assert stack.request_count() == upstream_calls


# --- errors -------------------------------------------------------------------------------


async def test_unknown_model_404(stack: EmbeddingStack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await openai_client(stack.url).embeddings.create(model="no-such-model", input="hello")

    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"
    assert "no-such-model" in error["message"]


@pytest.mark.parametrize("model", ["claude", "vertex-embedding"])
async def test_provider_without_embeddings_rejected(stack: EmbeddingStack, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client(stack.url).embeddings.create(model=model, input="hello")

    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "model"
    assert "does not support embeddings" in error["message"]


BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("missing input", {"input": None}, "input"),
    ("empty string", {"input": ""}, "input"),
    ("empty array", {"input": []}, "input"),
    ("empty string item", {"input": ["a", ""]}, "input"),
    ("mixed items", {"input": ["a", 3]}, "input"),
    ("object input", {"input": {"text": "a"}}, "input"),
    ("negative token", {"input": [5, -1]}, "input"),
    ("strings in token array", {"input": [["a"]]}, "input"),
    ("too many inputs", {"input": ["a"] * 2049}, "input"),
    ("empty model", {"model": ""}, "model"),
    ("encoding int8", {"encoding_format": "int8"}, "encoding_format"),
    ("dimensions zero", {"dimensions": 0}, "dimensions"),
    ("dimensions string", {"dimensions": "256"}, "dimensions"),
    ("user number", {"user": 5}, "user"),
    ("input_type unknown", {"extra_body": {"input_type": "query"}}, "input_type"),
]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [(overrides, field) for _, overrides, field in BAD_INPUTS],
    ids=[name for name, _, _ in BAD_INPUTS],
)
@pytest.mark.parametrize("model", ["openai-small", "titan-v2"])
async def test_bad_input_names_field(
    stack: EmbeddingStack, model: str, overrides: dict[str, Any], field: str
) -> None:
    params: dict[str, Any] = {"model": model, "input": "hello", **overrides}
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client(stack.url).embeddings.create(**params)

    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == field
    assert f"'{field}" in error["message"]
    assert stack.request_count() == 0


async def test_body_not_json(stack: EmbeddingStack, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {VIRTUAL_KEY}", "Content-Type": "application/json"}
    async with http.post(stack.url + "/v1/embeddings", data=b"{", headers=headers) as response:
        body = await response.json()

    assert response.status == 400
    assert "not valid JSON" in body["error"]["message"]


async def test_unknown_virtual_key(stack: EmbeddingStack) -> None:
    client = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key="sk-sf-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.embeddings.create(model="openai-small", input="hello")

    assert stack.request_count() == 0


# --- retries, fallback and batching -------------------------------------------------------


@pytest.mark.parametrize("model", PER_PROVIDER)
async def test_upstream_429_retried(stack: EmbeddingStack, model: str) -> None:
    sim = stack.sim_of(model)
    sim.faults.append(Fault(status=429))

    response, headers = await _embed_raw(stack.url, model=model, input="hello")

    assert len(response.data) == 1
    assert len(sim.requests) == 2
    provider, upstream, _ = MODELS[model]
    assert headers["x-smartflow-deployment"] == f"{provider}/{upstream}"


async def test_fallback_after_429s(stack: EmbeddingStack) -> None:
    stack.sims["openai"].faults.append(Fault(status=429, times=2))

    response, headers = await _embed_raw(stack.url, model="openai-then-azure", input="hello")

    assert len(response.data) == 1
    assert headers["x-smartflow-deployment"] == "azure/text-embedding-3-small"
    assert len(stack.sims["openai"].requests) == 2
    assert len(stack.sims["azure"].requests) == 1


async def test_retry_resends_failed_batch_only(stack: EmbeddingStack) -> None:
    sim = stack.sims["bedrock"]
    sim.faults.append(Fault(status=429))

    response = await openai_client(stack.url).embeddings.create(model="titan-v2", input=TEXTS)

    assert len(response.data) == len(TEXTS)
    # Three Titan calls, one rejected and sent again.
    assert len(sim.requests) == len(TEXTS) + 1


async def test_final_error_not_retried(stack: EmbeddingStack) -> None:
    sim = stack.sims["cohere"]
    sim.faults.append(Fault(status=400, message="invalid request: simulated"))

    with pytest.raises(openai.BadRequestError):
        await openai_client(stack.url).embeddings.create(model="cohere-v4", input="hello")

    assert len(sim.requests) == 1


@pytest.mark.parametrize(
    ("model", "count", "calls"),
    [("cohere-v4", 100, 2), ("bedrock-cohere", 100, 2), ("gemini-embedding", 150, 2)],
)
async def test_large_input_split_in_order(
    stack: EmbeddingStack, model: str, count: int, calls: int
) -> None:
    texts = [f"text number {index}" for index in range(count)]
    client = openai_client(stack.url)

    response = await client.embeddings.create(model=model, input=texts, encoding_format="float")
    single = await client.embeddings.create(model=model, input=texts[-1], encoding_format="float")

    assert [item.index for item in response.data] == list(range(count))
    assert response.data[-1].embedding == single.data[0].embedding
    assert len(stack.sim_of(model).requests) == calls + 1


# --- a provider that returns something else ---------------------------------------------


@asynccontextmanager
async def scripted_gemini(reply_body: dict[str, Any]) -> AsyncIterator[str]:
    """Serve a gateway whose Gemini upstream returns ``reply_body`` to every request."""

    async def reply(request: web.Request) -> web.Response:
        return web.json_response(reply_body)

    scripted = web.Application()
    scripted.router.add_post("/v1beta/models/{name}", reply)
    upstream = await start_gateway(scripted, "127.0.0.1", 0)
    providers: dict[str, Provider] = {
        "gemini": GeminiProvider("gemini", api_key=Secret(PROVIDER_KEY), base_url=upstream.url)
    }
    config = parse_config(
        {
            "server": {"access_log": False},
            "providers": {"gemini": {"type": "openai", "api_key_env": "UNUSED"}},
            "models": {"scripted": [{"provider": "gemini", "model": "gemini-embedding-001"}]},
            "keys": [{"name": "test", "sha256": hash_key(VIRTUAL_KEY)}],
        }
    )
    app = _with_embeddings(build_app(config, environ={}, providers=providers))
    gateway = await start_gateway(app, "127.0.0.1", 0)
    try:
        yield gateway.url
    finally:
        await gateway.stop()
        await upstream.stop()


async def test_wrong_vector_count_502() -> None:
    async with scripted_gemini({"embeddings": [{"values": [0.6, 0.8]}]}) as url:
        with pytest.raises(openai.InternalServerError) as caught:
            await openai_client(url).embeddings.create(model="scripted", input=["a", "b"])

    assert caught.value.status_code == 502
    error = caught.value.body
    assert isinstance(error, dict)
    assert "1 vectors for 2 inputs" in error["message"]


async def test_non_numeric_vector_502() -> None:
    async with scripted_gemini({"embeddings": [{"values": [0.6, "x"]}]}) as url:
        with pytest.raises(openai.InternalServerError) as caught:
            await openai_client(url).embeddings.create(model="scripted", input="a")

    assert caught.value.status_code == 502


async def test_gemini_reported_tokens_used() -> None:
    reply_body = {
        "embeddings": [{"values": [0.6, 0.8]}],
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7},
    }
    async with scripted_gemini(reply_body) as url:
        response, headers = await _embed_raw(url, model="scripted", input="a")

    assert response.usage.prompt_tokens == 7
    assert "x-smartflow-token-count" not in headers
    assert response.data[0].embedding == pytest.approx([0.6, 0.8], abs=1e-6)
