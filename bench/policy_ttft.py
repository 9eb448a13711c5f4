"""Time to first content token through the gateway with and without a streamed-response policy.

It starts an OpenAI simulator on 127.0.0.1 that waits ``--chunk-delay-ms`` after each stream
chunk, and one gateway per case: no policy, then a policy that redacts EMAIL in responses
with ``spec.stream.window_chars`` 16, 64 and 256. Each case gets ``--requests`` streamed
chat requests, one at a time, sent with the openai SDK. The script prints p50 and p99 of
the time from sending a request to the first chunk with non-empty ``delta.content``, and
the difference to the case without policy.

The simulator echoes the prompt, so the reply is ``REPLY``, about 600 characters in
chunks of three words (about 20 characters).

NOTE: simulator, gateways and client share one process and one event loop, so each
figure includes the client's and the simulator's own work. The differences between cases
are what the script is for.

Run: .venv/bin/python bench/policy_ttft.py [--requests N] [--chunk-delay-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import openai

from smartflow.auth.keys import hash_key
from smartflow.config.schema import parse_config
from smartflow.gateway.app import GATEWAY_KEY, RunningGateway, build_app, start_gateway
from smartflow.policy.documents import parse_documents
from smartflow.policy.engine import compile_policies
from smartflow.sim.openai import OpenAISimulator

VIRTUAL_KEY = "sk-sf-bench-0123456789abcdef"
PROVIDER_KEY = "bench-provider-key"
MODEL = "gpt-4o"
WINDOWS = (16, 64, 256)
WARMUP_REQUESTS = 3
# About 560 characters with no personal data, so no case rewrites anything.
PROMPT = " ".join(
    [
        "Summarise the quarterly report for the operations team and list the three largest",
        "risks with an owner for each. Keep the tone neutral and the summary short enough to",
        "read in a minute. Mention the change in p95 latency since the last deploy, the",
        "migration that touched twelve hundred tables, the retired endpoint, and the new",
        "onboarding flow that ships next sprint. End with one sentence on what to watch",
        "before the next review, and say which numbers are still estimates and which were",
        "measured on production traffic during the last four weeks of the quarter.",
    ]
)

# The simulator's reply: it echoes the last user message.
REPLY = f"Hello from {MODEL}. You said: {PROMPT}"


def policy_yaml(window_chars: int) -> str:
    return (
        "apiVersion: smartflow/v1\nkind: Policy\nmetadata: {name: response-scan}\n"
        "spec:\n"
        "  entities:\n    - {type: EMAIL, action: redact, on: [response]}\n"
        f"  stream: {{window_chars: {window_chars}}}\n"
    )


@dataclass
class CaseResult:
    name: str
    samples_ms: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p99(self) -> float:
        return statistics.quantiles(self.samples_ms, n=100, method="inclusive")[98]


async def start_gateway_for(sim_url: str, policy: str | None) -> RunningGateway:
    config = {
        "server": {"access_log": False},
        "providers": {
            "openai": {
                "type": "openai",
                "base_url": sim_url + "/v1",
                "api_key_env": "BENCH_PROVIDER_KEY",
            }
        },
        "models": {MODEL: [{"provider": "openai", "model": MODEL}]},
        "keys": [{"name": "bench", "sha256": hash_key(VIRTUAL_KEY), "team": "bench"}],
    }
    app = build_app(parse_config(config), environ={"BENCH_PROVIDER_KEY": PROVIDER_KEY})
    if policy is not None:
        app[GATEWAY_KEY].set_policy(compile_policies(parse_documents(policy)))
    return await start_gateway(app, "127.0.0.1", 0)


async def time_to_first_token(client: openai.AsyncOpenAI) -> float:
    """Return the seconds from sending one streamed request to its first content chunk."""
    started = time.perf_counter()
    first: float | None = None
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the stream ended without a content chunk")
    return first


async def run_case(name: str, sim_url: str, policy: str | None, requests: int) -> CaseResult:
    gateway = await start_gateway_for(sim_url, policy)
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=VIRTUAL_KEY, max_retries=0)
    try:
        for _ in range(WARMUP_REQUESTS):
            await time_to_first_token(client)
        samples = [await time_to_first_token(client) * 1000 for _ in range(requests)]
    finally:
        await client.close()
        await gateway.stop()
    return CaseResult(name, samples)


def render_table(results: list[CaseResult]) -> str:
    baseline = results[0]
    lines = [
        "| case | p50 ms | p99 ms | p50 vs no policy ms | p99 vs no policy ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for result in results:
        lines.append(
            f"| {result.name} | {result.p50:.1f} | {result.p99:.1f} | "
            f"{result.p50 - baseline.p50:+.1f} | {result.p99 - baseline.p99:+.1f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )


async def main(requests: int, chunk_delay_ms: float) -> None:
    sim = OpenAISimulator(api_keys=[PROVIDER_KEY], chunk_delay=chunk_delay_ms / 1000)
    sim_url = await sim.start()
    try:
        cases: list[tuple[str, str | None]] = [("no policy", None)]
        cases += [(f"window_chars {w}", policy_yaml(w)) for w in WINDOWS]
        results = [await run_case(name, sim_url, policy, requests) for name, policy in cases]
    finally:
        await sim.stop()
    sys.stdout.write(
        f"{requests} streamed requests per case, sequential; simulator chunk delay "
        f"{chunk_delay_ms:g} ms; reply of {len(REPLY)} characters\n"
        f"machine: {machine()}\n\n{render_table(results)}\n"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=60, help="measured requests per case (default 60)"
    )
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=5.0,
        help="simulator pause after each stream chunk, in milliseconds (default 5)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    asyncio.run(main(arguments.requests, arguments.chunk_delay_ms))
