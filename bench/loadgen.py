"""Open-loop load generator: POSTs at a fixed rate and reports per-request latency as JSON.

Each request starts on its own schedule (request i at start + i / rate) in its own task, so a
slow response never delays the next send. Latency runs from the moment a request is sent to
the last byte of its body. The lag between the scheduled and the actual send time is reported
separately, so a reader can tell whether the generator kept its rate.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from floor_proxy import require_loopback_url

try:
    import uvloop
except ImportError:  # uvloop is optional: the generator still runs on the default loop.
    uvloop = None  # type: ignore[assignment]

__all__ = ["LoadSettings", "percentile", "run_open_loop", "stats_ms", "summarize"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """Request, rate and duration of one open-loop run."""

    url: str
    body: bytes
    headers: dict[str, str]
    rate: float = 200.0
    duration_s: float = 10.0
    warmup_s: float = 2.0
    timeout_s: float = 10.0
    expect_suffix: bytes = b""
    keep_samples: bool = False


@dataclass(slots=True)
class _Sample:
    lag_s: float = 0.0
    latency_s: float = 0.0
    first_byte_s: float = 0.0
    error: str = ""


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile (``fraction`` in 0..1) of unsorted ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


async def _send_one(
    session: aiohttp.ClientSession, settings: LoadSettings, scheduled: float, sample: _Sample
) -> None:
    started = time.perf_counter()
    sample.lag_s = started - scheduled
    try:
        async with session.post(settings.url, data=settings.body, headers=settings.headers) as resp:
            tail = b""
            first = True
            async for chunk in resp.content.iter_any():
                if first:
                    sample.first_byte_s = time.perf_counter() - started
                    first = False
                tail = (tail + chunk)[-64:]
            sample.latency_s = time.perf_counter() - started
            if resp.status != 200:
                sample.error = f"status_{resp.status}"
            elif not tail.rstrip().endswith(settings.expect_suffix.rstrip()):
                sample.error = "unexpected_body_end"
    except TimeoutError:
        sample.error = "timeout"
    except aiohttp.ClientError as exc:
        sample.error = type(exc).__name__


async def run_open_loop(settings: LoadSettings) -> dict[str, object]:
    """Send requests on the fixed schedule and return the summary of the measured part."""
    require_loopback_url(settings.url)
    total = int((settings.warmup_s + settings.duration_s) * settings.rate)
    warmup_count = int(settings.warmup_s * settings.rate)
    timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    samples = [_Sample() for _ in range(total)]
    tasks: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter() + 0.05
        for index, sample in enumerate(samples):
            scheduled = start + index / settings.rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send_one(session, settings, scheduled, sample)))
        send_window_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
    measured = samples[warmup_count:]
    summary = summarize(measured, settings.keep_samples)
    summary["rate_target"] = settings.rate
    summary["rate_achieved"] = round(total / send_window_s, 1) if send_window_s > 0 else math.nan
    summary["warmup_requests"] = warmup_count
    return summary


def stats_ms(values: list[float]) -> dict[str, float]:
    """Return p50, p90, p99, max and mean of ``values`` (seconds) in milliseconds."""
    if not values:
        return {}
    return {
        "p50": round(percentile(values, 0.50) * 1000, 3),
        "p90": round(percentile(values, 0.90) * 1000, 3),
        "p99": round(percentile(values, 0.99) * 1000, 3),
        "max": round(max(values) * 1000, 3),
        "mean": round(sum(values) / len(values) * 1000, 3),
    }


def summarize(samples: list[_Sample], keep_samples: bool = False) -> dict[str, object]:
    """Summarize samples: counts, errors by kind, and latency statistics in milliseconds.

    With ``keep_samples``, the result also has the raw values in seconds under "samples_s",
    so runs can be pooled before taking percentiles.
    """
    ok = [sample for sample in samples if not sample.error]
    errors = Counter(sample.error for sample in samples if sample.error)
    summary: dict[str, object] = {
        "requests": len(samples),
        "ok": len(ok),
        "errors": dict(errors),
        "latency_ms": stats_ms([sample.latency_s for sample in ok]),
        "first_byte_ms": stats_ms([sample.first_byte_s for sample in ok]),
        "send_lag_ms": stats_ms([sample.lag_s for sample in samples]),
    }
    if keep_samples:
        summary["samples_s"] = {
            "latency": [round(sample.latency_s, 7) for sample in ok],
            "first_byte": [round(sample.first_byte_s, 7) for sample in ok],
            "send_lag": [round(sample.lag_s, 7) for sample in samples],
        }
    return summary


def _parse_header(text: str) -> tuple[str, str]:
    name, separator, value = text.partition(":")
    if not separator or not name.strip():
        raise argparse.ArgumentTypeError(f"invalid header {text!r}: expected 'Name: value'")
    return name.strip(), value.strip()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    add = parser.add_argument
    add("--url", required=True, help="target URL on loopback")
    add("--body-file", type=Path, required=True, help="file with the POST body")
    add("--header", type=_parse_header, action="append", default=[], help="'Name: value'")

    add("--rate", type=float, default=200.0, help="requests per second (default 200)")
    add("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    add("--warmup", type=float, default=2.0, help="unmeasured seconds before (default 2)")
    add("--timeout", type=float, default=10.0, help="per-request timeout in seconds")

    add(
        "--expect-suffix",
        default="",
        help="text every response body must end with, ignoring trailing whitespace",
    )
    add("--samples", action="store_true", help="also print every latency sample, in seconds")
    add("--no-uvloop", action="store_true", help="use the default event loop")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one open-loop measurement and print its summary as one JSON line."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    settings = LoadSettings(
        url=args.url,
        body=args.body_file.read_bytes(),
        headers=dict(args.header),
        rate=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        timeout_s=args.timeout,
        expect_suffix=args.expect_suffix.encode(),
        keep_samples=args.samples,
    )
    loop_factory = None if args.no_uvloop or uvloop is None else uvloop.new_event_loop

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        summary = runner.run(run_open_loop(settings))
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
