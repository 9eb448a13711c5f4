"""Event ingestion rate of the control plane into PostgreSQL (``POST /v1/events``).

It creates a new database on the PostgreSQL server, starts the control plane on it as a
child process (``smartflow control-plane``), enrolls one instance, and sends
``--events`` usage events in batches of ``--batch`` from ``--concurrency`` parallel
senders, as the shipper does. The events look like the gateway's own: tokens, cost,
attempts, a policy summary with entity counts on every fourth event. The request
bodies are built before the clock starts.

It prints events stored per second (wall time from the first request to the last
response) and the latency of one batch, then checks with SQL that every event is stored
once, and drops the database.

Run: .venv/bin/python bench/ingest_bench.py [--events N] [--batch N] [--concurrency N]
     [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from smartflow.usage.events import (
    AttemptRecord,
    PolicySummary,
    TokenCounts,
    UsageEvent,
    new_event_id,
    utc_timestamp,
)

ADMIN_TOKEN = "sf-admin-bench-" + "b" * 32
DEFAULT_POSTGRES = os.environ.get(
    "SMARTFLOW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash")
TEAMS = ("finance", "research", "support", "legal")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _event(index: int, instance: str) -> UsageEvent:
    policy = None
    if index % 4 == 0:
        policy = PolicySummary(
            policies=["pii"],
            request_entities={"EMAIL": 1 + index % 3},
            actions={"EMAIL": "mask"},
        )
    model = MODELS[index % len(MODELS)]
    return UsageEvent(
        event_id=new_event_id(),
        request_id="req_" + secrets.token_hex(16),
        started_at=utc_timestamp(time.time() - index % 3600),
        instance=instance,
        site="bench",
        dialect="openai",
        key_name=f"key-{index % 20}",
        team=TEAMS[index % len(TEAMS)],
        user=f"user-{index % 100}",
        provider="openai",
        provider_kind="openai",
        deployment=f"openai/{model}",
        model_requested=model,
        model_served=model,
        tokens=TokenCounts(input=500 + index % 900, output=50 + index % 300, cached_input=64),
        usage_source="provider",
        cost_usd="0.0012345",
        price_as_of="2026-07-24",
        latency_ms=100.0 + index % 500,
        ttft_ms=40.0 + index % 60 if index % 2 else None,
        stream=bool(index % 2),
        attempts=[AttemptRecord(f"openai/{model}")],
        policy=policy,
        finish_reason="stop" if index % 10 else "length",
        status=200,
    )


def _bodies(count: int, batch: int, instance: str) -> list[bytes]:
    bodies = []
    for start in range(0, count, batch):
        events = [_event(i, instance) for i in range(start, min(start + batch, count))]
        head = {
            "schema_version": 1,
            "instance": instance,
            "site": "bench",
            "batch_id": new_event_id(),
            "sent_at": utc_timestamp(time.time()),
        }
        bodies.append(orjson.dumps({**head, "events": events}))
    return bodies


async def _wait_ready(http: aiohttp.ClientSession, url: str, process: Any) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise SystemExit("the control plane exited early; see its log above")
        try:
            async with http.get(url + "/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the control plane did not start within 60 s")


async def _enroll(http: aiohttp.ClientSession, url: str) -> str:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.post(url + "/v1/enrollment-tokens", json={}, headers=admin) as response:
        token = (await response.json())["token"]
    body = {"token": token, "name": "bench-1", "site": "bench"}
    async with http.post(url + "/v1/enroll", json=body) as response:
        return str((await response.json())["credential"])


async def _send_all(
    http: aiohttp.ClientSession, url: str, credential: str, bodies: list[bytes], concurrency: int
) -> tuple[float, list[float]]:
    headers = {"Authorization": f"Bearer {credential}", "Content-Type": "application/json"}
    pending = list(reversed(bodies))
    latencies: list[float] = []

    async def sender() -> None:
        while pending:
            body = pending.pop()
            started = time.perf_counter()
            async with http.post(url + "/v1/events", data=body, headers=headers) as response:
                text = await response.read()
                if response.status != 200:
                    raise SystemExit(f"ingest failed: {response.status} {text[:300]!r}")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def main(args: argparse.Namespace) -> None:
    database = f"sf_ingest_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(args.postgres)
    await admin.execute(f'CREATE DATABASE "{database}"')
    base = args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    state = Path(tempfile.mkdtemp(prefix="sf-ingest-bench-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SMARTFLOW_")},
        "SMARTFLOW_CONTROL_ADMIN_TOKEN": ADMIN_TOKEN,
        "SMARTFLOW_LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smartflow.cli", "control-plane", "--port", str(port),
        "--state-dir", str(state), "--database-url", f"{base}/{database}",
        env=env,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=args.concurrency)
        ) as http:
            await _wait_ready(http, url, process)
            credential = await _enroll(http, url)
            bodies = _bodies(args.events, args.batch, "bench-1")
            warmup = _bodies(args.batch * 2, args.batch, "bench-1")
            await _send_all(http, url, credential, warmup, 1)
            elapsed, latencies = await _send_all(http, url, credential, bodies, args.concurrency)
        target = await asyncpg.connect(args.postgres.rsplit("/", 1)[0] + f"/{database}")
        try:
            stored = await target.fetchval("SELECT count(DISTINCT event_id) FROM usage_events")
        finally:
            await target.close()
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        shutil.rmtree(state, ignore_errors=True)
    expected = args.events + args.batch * 2
    rate = args.events / elapsed
    latencies.sort()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"events: {args.events} in batches of {args.batch}, {args.concurrency} senders")
    print(f"wall time: {elapsed:.2f} s")
    print(f"ingest rate: {rate:,.0f} events/s")
    print(
        f"batch latency: p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p95 {latencies[int(len(latencies) * 0.95) - 1] * 1000:.1f} ms"
    )
    print(f"stored: {stored} distinct events (expected {expected})")
    if stored != expected:
        raise SystemExit("stored count differs from the events sent")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, default=100_000, help="events to send (default: 100000)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=500,
        help="events per request (default: 500, the shipper's default)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="parallel senders (default: 4)")
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        help="maintenance database URL of the PostgreSQL server (default: "
        "$SMARTFLOW_TEST_POSTGRES_URL or postgresql://postgres@127.0.0.1:5432/test)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_arguments()))
