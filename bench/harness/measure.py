"""Measure targets: a functional probe, then rounds of open-loop latency and wrk saturation runs.

The targets of one workload (the upstream, the floor and the gateway cases) run side by side,
and every round measures each of them in turn. Slow changes in background load then hit all
targets alike instead of whichever happened to run at that moment.
"""

from __future__ import annotations

import http.client
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from loadgen import stats_ms

from harness.cases import RequestSpec
from harness.machine import cpu_busy_percent, group_cpu_seconds, read_cpu_times
from harness.procs import ProcessGroup, pinned

__all__ = [
    "MeasureSettings",
    "Measured",
    "Target",
    "TargetRecord",
    "combine_rounds",
    "measure_round",
    "prepare_target",
    "probe",
]

logger = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent.parent
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
LOADGEN = BENCH_DIR / "loadgen.py"
_WRK_MARKER = "BENCH_WRK_JSON "
# Warm-up of the open-loop generator in rounds after the first: the server is warm by then,
# but each generator process opens new connections.
_LATER_ROUND_WARMUP_S = 0.5

# One target's results: "latency" is the loadgen summary, "saturation" the wrk summary.
Measured = dict[str, dict[str, object]]


@dataclass(frozen=True)
class MeasureSettings:
    """Durations, rates and client settings of one run.

    The durations are per target and split evenly over the rounds.
    """

    wrk: str
    rounds: int = 2
    wrk_duration_s: float = 10.0
    wrk_warmup_s: float = 2.0
    wrk_connections: int = 32
    wrk_threads: int = 1
    upstream_wrk_duration_s: float = 5.0
    rate: float = 200.0
    latency_duration_s: float = 10.0
    latency_warmup_s: float = 2.0
    client_cpus: str | None = None


@dataclass(frozen=True)
class Target:
    """A server to measure: its name in the report, base URL and the request to send it."""

    name: str
    base_url: str
    request: RequestSpec
    authorization: str
    # Process group of the server whose CPU use under wrk is measured, or None to skip that.
    server_pgid: int | None = None
    # The upstream's saturation is for reference only, so it is measured once, briefly.
    reference_only: bool = False

    @property
    def url(self) -> str:
        return self.base_url + self.request.path


@dataclass
class TargetRecord:
    """A target under measurement and the results of its rounds so far."""

    target: Target
    # Unique in the run, for log and body file names: the workload and target, or the case.
    label: str
    body_file: Path
    latency_rounds: list[dict[str, object]] = field(default_factory=list)
    saturation_rounds: list[dict[str, object]] = field(default_factory=list)


def probe(target: Target, timeout_s: float = 10.0) -> None:
    """Send one request and check the whole response. Raise RuntimeError when it is wrong."""
    host, _, port = target.base_url.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    headers = {"Content-Type": "application/json", "Authorization": target.authorization}
    try:
        connection.request("POST", target.request.path, body=target.request.body, headers=headers)
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        raise RuntimeError(f"probe of {target.name} at {target.base_url} failed: {exc!r}") from exc
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(
            f"probe of {target.name} returned status {response.status}: {body[:500]!r}"
        )
    problem = target.request.check(body)
    if problem is not None:
        raise RuntimeError(f"probe of {target.name} returned an invalid body: {problem}")


def prepare_target(target: Target, work_dir: Path, label: str) -> TargetRecord:
    """Probe ``target`` and write its request body where wrk and the generator read it."""
    probe(target)
    body_file = work_dir / f"body-{label}.json"
    body_file.write_bytes(target.request.body)
    return TargetRecord(target, label, body_file)


def _wrk_argv(settings: MeasureSettings, url: str, duration_s: float) -> list[str]:
    argv = [
        settings.wrk,
        f"-t{settings.wrk_threads}",
        f"-c{settings.wrk_connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        url,
    ]
    return pinned(argv, settings.client_cpus)


def _parse_wrk(output: str) -> dict[str, object]:
    for line in reversed(output.splitlines()):
        if line.startswith(_WRK_MARKER):
            parsed: dict[str, object] = orjson.loads(line.removeprefix(_WRK_MARKER))
            return parsed
    raise RuntimeError(f"wrk printed no summary line; its output was:\n{output[-2000:]}")


def _server_cpu_seconds(target: Target) -> float:
    return 0.0 if target.server_pgid is None else group_cpu_seconds(target.server_pgid)


def run_wrk(
    procs: ProcessGroup,
    settings: MeasureSettings,
    record: TargetRecord,
    duration_s: float,
    warmup_s: float,
) -> dict[str, object]:
    """Run wrk (after a warm-up run when ``warmup_s`` > 0) and return its summary.

    The summary gets ``rps``, the CPU use of the server's process group and how busy each
    CPU of the machine was during the measured run.
    """
    target = record.target
    env = {
        **os.environ,
        "BENCH_BODY_FILE": str(record.body_file),
        "BENCH_AUTHORIZATION": target.authorization,
    }
    if warmup_s > 0:
        warmup = _wrk_argv(settings, target.url, warmup_s)
        procs.run(f"wrk-warmup-{record.label}", warmup, env, warmup_s + 30)
    cpu_times = read_cpu_times()
    server_cpu_s = _server_cpu_seconds(target)
    started = time.monotonic()
    argv = _wrk_argv(settings, target.url, duration_s)
    log_name = f"wrk-{record.label}-round{len(record.saturation_rounds) + 1}"
    code, output = procs.run(log_name, argv, env, duration_s + 30)
    elapsed_s = time.monotonic() - started
    cpu_busy = cpu_busy_percent(cpu_times, read_cpu_times())
    server_cpu_s = _server_cpu_seconds(target) - server_cpu_s
    if code != 0:
        raise RuntimeError(f"wrk against {target.name} exited with code {code}:\n{output[-2000:]}")
    summary = _parse_wrk(output)
    duration_us, requests = summary["duration_us"], summary["requests"]
    assert isinstance(duration_us, int) and isinstance(requests, int), summary
    summary["rps"] = round(requests / (duration_us / 1e6), 1) if duration_us else 0.0
    summary["cpu_busy_percent"] = cpu_busy
    if target.server_pgid is not None:
        summary["server_cpu_percent"] = round(100.0 * server_cpu_s / elapsed_s, 1)
    return summary


def run_loadgen(
    procs: ProcessGroup,
    settings: MeasureSettings,
    record: TargetRecord,
    duration_s: float,
    warmup_s: float,
) -> dict[str, object]:
    """Run the open-loop generator against the target and return its summary with samples."""
    target = record.target
    argv = [
        sys.executable, str(LOADGEN), "--url", target.url, "--body-file", str(record.body_file),
        "--header", "Content-Type: application/json",
        "--header", f"Authorization: {target.authorization}",
        "--rate", str(settings.rate), "--duration", str(duration_s), "--warmup", str(warmup_s),
        "--expect-suffix", target.request.expect_suffix.decode().rstrip(), "--samples",
    ]  # fmt: skip
    timeout_s = duration_s + warmup_s + 60
    code, output = procs.run(
        f"loadgen-{record.label}-round{len(record.latency_rounds) + 1}",
        pinned(argv, settings.client_cpus),
        None,
        timeout_s,
    )
    if code != 0:
        raise RuntimeError(f"loadgen against {target.name} exited with code {code}:\n{output}")
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            summary: dict[str, object] = orjson.loads(line)
            return summary
    raise RuntimeError(f"loadgen printed no JSON summary; its output was:\n{output[-2000:]}")


def measure_round(
    procs: ProcessGroup, settings: MeasureSettings, record: TargetRecord, round_index: int
) -> None:
    """Measure one round of ``record``'s target: latency at the fixed rate, then saturation.

    The latency run goes first, so the proxy is not measured right after being saturated.
    Warm-ups run in the first round only, except a short one for the generator's connections.
    """
    target = record.target
    first = round_index == 0
    latency_warmup_s = settings.latency_warmup_s if first else _LATER_ROUND_WARMUP_S
    duration_s = settings.latency_duration_s / settings.rounds
    logger.info("%s: latency at %.0f requests/s, round %d", target.name, settings.rate,
                round_index + 1)  # fmt: skip
    latency = run_loadgen(procs, settings, record, duration_s, latency_warmup_s)
    record.latency_rounds.append(latency)
    if target.reference_only and not first:
        return
    if target.reference_only:
        wrk_duration_s, wrk_warmup_s = settings.upstream_wrk_duration_s, 1.0
    else:
        wrk_duration_s = settings.wrk_duration_s / settings.rounds
        wrk_warmup_s = settings.wrk_warmup_s if first else 0.0
    logger.info("%s: saturation with wrk for %.0f s", target.name, wrk_duration_s)
    record.saturation_rounds.append(run_wrk(procs, settings, record, wrk_duration_s, wrk_warmup_s))


def _combine_latency(rounds: list[dict[str, object]]) -> dict[str, object]:
    pooled: dict[str, list[float]] = {"latency": [], "first_byte": [], "send_lag": []}
    errors: Counter[str] = Counter()
    per_round = []
    for summary in rounds:
        samples = summary.pop("samples_s")
        round_errors = summary["errors"]
        assert isinstance(samples, dict) and isinstance(round_errors, dict)
        for name, values in pooled.items():
            values.extend(samples[name])
        errors.update(round_errors)
        per_round.append(summary)
    return {
        "requests": sum(int(str(summary["requests"])) for summary in rounds),
        "ok": len(pooled["latency"]),
        "errors": dict(errors),
        "latency_ms": stats_ms(pooled["latency"]),
        "first_byte_ms": stats_ms(pooled["first_byte"]),
        "send_lag_ms": stats_ms(pooled["send_lag"]),
        "rounds": per_round,
    }


def _number(summary: dict[str, object], key: str) -> float:
    value = summary[key]
    assert isinstance(value, int | float), (key, value)
    return float(value)


def _spread(values: list[float]) -> float | None:
    """Return (max - min) / mean of per-round rates, or None with fewer than two rounds."""
    if len(values) < 2 or sum(values) <= 0:
        return None
    return round((max(values) - min(values)) / (sum(values) / len(values)), 3)


def _combine_saturation(rounds: list[dict[str, object]]) -> dict[str, object]:
    duration_s = sum(_number(summary, "duration_us") for summary in rounds) / 1e6
    requests = sum(int(_number(summary, "requests")) for summary in rounds)
    rps_by_round = [_number(summary, "rps") for summary in rounds]
    errors: Counter[str] = Counter()
    for summary in rounds:
        round_errors = summary["errors"]
        assert isinstance(round_errors, dict)
        errors.update(round_errors)
    combined: dict[str, object] = {
        "rps": round(requests / duration_s, 1) if duration_s else 0.0,
        "requests": requests,
        "duration_s": round(duration_s, 3),
        "errors": dict(errors),
        "rps_by_round": rps_by_round,
        "rps_spread": _spread(rps_by_round),
        "rounds": rounds,
    }
    if all("server_cpu_percent" in summary for summary in rounds):
        weighted = sum(
            _number(summary, "server_cpu_percent") * _number(summary, "duration_us")
            for summary in rounds
        )
        combined["server_cpu_percent"] = round(weighted / (duration_s * 1e6), 1)
    return combined


def combine_rounds(record: TargetRecord) -> Measured:
    """Pool the rounds of a target: latency percentiles over all samples, total saturation rate."""
    return {
        "latency": _combine_latency(record.latency_rounds),
        "saturation": _combine_saturation(record.saturation_rounds),
    }
