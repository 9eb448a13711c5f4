"""Micro-benchmark of one Bedrock streamed reply: event-stream decoding plus OpenAI SSE encoding.

Measures, in one process and without sockets, the gateway's per-stream CPU cost of turning a
ConverseStream body (binary event-stream frames) into an OpenAI chat.completion.chunk stream.
The baseline is the same reply from an OpenAI SSE upstream, decoded and encoded the same way
(the path of an OpenAI upstream that cannot be passed through). Network, TLS and the HTTP
server are not measured here, and bench/run.py measures those for the OpenAI path.

Usage: .venv/bin/python bench/bedrock_case.py [--streams N] [--deltas N] [--chunk-bytes N]
                                               [--json FILE]
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from smartflow.core.stream import StreamEvent
from smartflow.dialects.bedrock.streaming import ConverseStreamDecoder
from smartflow.dialects.openai.streaming import StreamDecoder as OpenAIStreamDecoder
from smartflow.dialects.openai.streaming import StreamEncoder as OpenAIStreamEncoder
from smartflow.sim.bedrock_eventstream import event_frame
from smartflow.transport.eventstream import EventStreamParser
from smartflow.transport.sse import SSEParser

__all__ = ["CaseResult", "main", "run_case"]

logger = logging.getLogger("bench.bedrock")

MODEL = "anthropic.claude-3-5-sonnet-20241022-v2:0"
_WORDS = "a service mesh moves retries timeouts and TLS out of each service".split()


@dataclass(frozen=True)
class CaseResult:
    """Per-stream timings in microseconds over the measured streams."""

    name: str
    streams: int
    events_per_stream: int
    upstream_bytes: int
    median_us: float
    p90_us: float
    p99_us: float
    per_event_us: float


def _deltas(count: int) -> list[str]:
    """Return ``count`` text pieces of three words each, as a model streams them."""
    return [
        " ".join(_WORDS[(3 * i + j) % len(_WORDS)] for j in range(3)) + " " for i in range(count)
    ]


def bedrock_body(deltas: list[str]) -> list[bytes]:
    """Build a ConverseStream body as frames, with the padding Bedrock adds to events."""
    frames = [event_frame("messageStart", {"role": "assistant"}, pad=3)]
    for text in deltas:
        delta = {"contentBlockIndex": 0, "delta": {"text": text}}
        frames.append(event_frame("contentBlockDelta", delta, pad=10))
    frames.append(event_frame("contentBlockStop", {"contentBlockIndex": 0}, pad=5))
    frames.append(event_frame("messageStop", {"stopReason": "end_turn"}, pad=9))
    output_tokens = 3 * len(deltas)
    usage = {"inputTokens": 60, "outputTokens": output_tokens, "totalTokens": 60 + output_tokens}
    metadata = {"usage": usage, "metrics": {"latencyMs": 900}}
    frames.append(event_frame("metadata", metadata, pad=11))
    return frames


def openai_body(deltas: list[str]) -> list[bytes]:
    """Build the equivalent OpenAI SSE body, one event per frame of the Bedrock body."""

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
        # The usage chunk of include_usage has no choices.
        choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
        body = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o",
            "choices": choices,
            "usage": usage,
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": text}) for text in deltas]
    events.append(chunk({}, "stop"))
    output_tokens = 3 * len(deltas)
    usage = {
        "prompt_tokens": 60,
        "completion_tokens": output_tokens,
        "total_tokens": 60 + output_tokens,
    }
    events.append(chunk({}, usage=usage))
    events.append(b"data: [DONE]\n\n")
    return events


def split_body(frames: list[bytes], chunk_bytes: int) -> list[bytes]:
    """Split the body into the reads a client receives: one per frame when ``chunk_bytes`` is 0."""
    if chunk_bytes <= 0:
        return frames
    body = b"".join(frames)
    return [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)]


class _Pipeline:
    """One translated stream: frame parser, upstream decoder and OpenAI encoder."""

    def __init__(self, parser: Any, decoder: Any) -> None:
        self.parser = parser
        self.decoder = decoder
        self.encoder = OpenAIStreamEncoder("bench-model", include_usage=True)

    def run(self, reads: Iterable[bytes]) -> bytes:
        out = bytearray()
        for read in reads:
            for name, data in self.parser.feed(read):
                out += self._encode(self.decoder.feed(data, name))
        for name, data in self.parser.close():
            out += self._encode(self.decoder.feed(data, name))
        out += self._encode(self.decoder.close())
        return bytes(out)

    def _encode(self, events: list[StreamEvent]) -> bytes:
        return b"".join(self.encoder.encode(event) for event in events)


def _bedrock_pipeline() -> _Pipeline:
    return _Pipeline(EventStreamParser("bedrock"), ConverseStreamDecoder("bedrock", model=MODEL))


def _openai_pipeline() -> _Pipeline:
    return _Pipeline(SSEParser(), OpenAIStreamDecoder("openai"))


def check_output(body: bytes, expected_text: str) -> str | None:
    """Return what is wrong with the OpenAI SSE a pipeline wrote, or None when it is valid."""
    events = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    if not events or events[-1] != b"[DONE]":
        return "the stream does not end with data: [DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    text = "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
    )
    if text != expected_text:
        return f"content {text[:60]!r}... differs from the upstream text"
    if not any(chunk.get("usage") for chunk in chunks):
        return "no chunk carries usage"
    return None


def run_case(
    name: str, make: Callable[[], _Pipeline], reads: list[bytes], *, streams: int, events: int
) -> tuple[CaseResult, bytes]:
    """Time ``streams`` fresh pipelines over ``reads`` after a warm-up of a tenth as many."""
    output = b""
    for _ in range(max(streams // 10, 1)):
        output = make().run(reads)
    timings: list[float] = []
    for _ in range(streams):
        pipeline = make()
        started = time.perf_counter_ns()
        pipeline.run(reads)
        timings.append((time.perf_counter_ns() - started) / 1000)
    quantiles = statistics.quantiles(timings, n=100)
    median = statistics.median(timings)
    result = CaseResult(
        name=name,
        streams=streams,
        events_per_stream=events,
        upstream_bytes=sum(map(len, reads)),
        median_us=round(median, 1),
        p90_us=round(quantiles[89], 1),
        p99_us=round(quantiles[98], 1),
        per_event_us=round(median / events, 2),
    )
    return result, output


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000, help="measured streams per case")
    parser.add_argument("--deltas", type=int, default=100, help="text deltas per stream")
    parser.add_argument(
        "--chunk-bytes",
        type=int,
        default=0,
        help="split the body into reads of this many bytes; 0 gives one read per event",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def _print_table(results: list[CaseResult], events: int) -> None:
    print(f"{'case':<20}{'bytes':>8}{'median us':>11}{'p90 us':>9}{'p99 us':>9}{'us/event':>10}")
    for r in results:
        print(
            f"{r.name:<20}{r.upstream_bytes:>8}{r.median_us:>11}{r.p90_us:>9}{r.p99_us:>9}"
            f"{r.per_event_us:>10}"
        )
    print(f"python {platform.python_version()} on {platform.machine()}, {events} events per stream")


def _write_json(path: Path, args: argparse.Namespace, results: list[CaseResult]) -> None:
    record = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "settings": vars(args) | {"json": str(path)},
        "cases": [asdict(r) for r in results],
    }
    path.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))


def main(argv: list[str] | None = None) -> int:
    """Run both cases, print a table and return 1 when a pipeline's output is invalid."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    deltas = _deltas(args.deltas)
    events = args.deltas + 4  # with messageStart, contentBlockStop, messageStop and metadata
    cases = [
        ("bedrock-to-openai", _bedrock_pipeline, bedrock_body(deltas)),
        ("openai-to-openai", _openai_pipeline, openai_body(deltas)),
    ]

    results: list[CaseResult] = []
    for name, make, frames in cases:
        reads = split_body(frames, args.chunk_bytes)
        result, output = run_case(name, make, reads, streams=args.streams, events=events)
        problem = check_output(output, "".join(deltas))
        if problem is not None:
            logger.error("%s: invalid output: %s", name, problem)
            return 1
        results.append(result)

    _print_table(results, events)
    if args.json is not None:
        _write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
