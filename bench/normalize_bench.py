"""Micro-benchmark of one normalize call per attempt for a typical chat request.

Prints p50, p99 and p99.9 in microseconds per call for several targets, next to a
no-op baseline measured in the same run with the same loop, so the loop and timer
overhead can be read off. The profiles are loaded and compiled before timing starts,
as they are in the gateway.

    .venv/bin/python bench/normalize_bench.py [--calls N] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from smartflow.core.types import ChatRequest, Message, Sampling, TextPart, Tool
from smartflow.normalize import Policy, ProfileSet, load_profiles, normalize

TARGETS = (
    ("gpt-4o", "openai"),
    ("o3", "openai"),
    ("claude-sonnet-4-5", "anthropic"),
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", "bedrock"),
    ("gemini-2.5-flash", "gemini"),
    ("command-a-03-2025", "cohere"),
)


def typical_request() -> ChatRequest:
    """Return a chat request like those of OpenAI SDK callers: a few turns, common knobs."""
    return ChatRequest(
        model="gpt-4o",
        messages=[
            Message("system", [TextPart("You are a helpful assistant. Answer briefly.")]),
            Message("user", [TextPart("Summarise the plot of Hamlet.")]),
            Message("assistant", [TextPart("A prince avenges his father, and most die.")]),
            Message("user", [TextPart("And of Macbeth, in two sentences?")]),
        ],
        sampling=Sampling(temperature=0.7, top_p=0.95, max_tokens=512, stop=["\n\nUser:"]),
        tools=[Tool("lookup", "Look a fact up.", {"type": "object", "properties": {}})],
        user="user-1234",
    )


def _noop(
    request: ChatRequest,
    target_model: str,
    provider: str,
    *,
    profiles: ProfileSet,
    policy: Policy,
) -> tuple[ChatRequest, list[Any]]:
    return request, []


def measure(call: Callable[[], object], calls: int) -> list[float]:
    """Return the duration of each of ``calls`` calls in microseconds."""
    timer = time.perf_counter_ns
    durations = []
    for _ in range(calls // 10):
        call()
    gc.collect()
    for _ in range(calls):
        start = timer()
        call()
        durations.append((timer() - start) / 1000)
    return durations


def percentiles(durations: list[float]) -> dict[str, float]:
    ordered = sorted(durations)
    last = len(ordered) - 1
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[int(last * 0.99)], 2),
        "p99.9": round(ordered[int(last * 0.999)], 2),
    }


def run(calls: int) -> dict[str, Any]:
    profiles = load_profiles()
    policy = Policy()
    request = typical_request()
    results: dict[str, Any] = {}
    baseline = measure(
        lambda: _noop(request, "gpt-4o", "openai", profiles=profiles, policy=policy), calls
    )
    results["baseline (no-op call)"] = percentiles(baseline)
    for model, provider in TARGETS:
        durations = measure(
            lambda m=model, p=provider: normalize(request, m, p, profiles=profiles, policy=policy),
            calls,
        )
        results[f"{provider}:{model}"] = percentiles(durations)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000, help="timed calls per target")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = run(args.calls)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"python {platform.python_version()} on {platform.machine()} {platform.system()}, "
        f"{args.calls} calls per row, microseconds per call"
    )
    print(f"{'target':<55} {'p50':>8} {'p99':>8} {'p99.9':>8}")
    for name, row in results.items():
        print(f"{name:<55} {row['p50']:>8} {row['p99']:>8} {row['p99.9']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
