"""Compare each gateway case with the floor, check the targets, and print and save the results."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import orjson

__all__ = [
    "TARGET_BASELINE_RATIO",
    "TARGET_P99_OVER_FLOOR_MS",
    "TARGET_SATURATION_RATIO",
    "compare_case",
    "compare_with_baseline",
    "error_count",
    "render_table",
    "rps_per_cpu",
    "server_cpu_percent",
    "write_json",
]

# The gateway must keep at least this fraction of the floor's saturation rate.
TARGET_SATURATION_RATIO = 0.60
# A case with a baseline (the same gateway with a feature off) must keep at least this
# fraction of the baseline's saturation rate.
TARGET_BASELINE_RATIO = 0.90
# The latency the gateway adds at p99 may exceed the floor's added p99 by at most this much.
TARGET_P99_OVER_FLOOR_MS = 2.0

Measured = Mapping[str, Mapping[str, object]]


def _latency_ms(measured: Measured, quantile: str) -> float:
    latency = measured["latency"]["latency_ms"]
    assert isinstance(latency, Mapping)
    return float(latency.get(quantile, math.nan))


def _rps(measured: Measured) -> float:
    value = measured["saturation"]["rps"]
    assert isinstance(value, int | float), value
    return float(value)


def error_count(measured: Measured) -> int:
    """Count failed requests of both load generators: loadgen errors and wrk errors."""
    loadgen_errors = measured["latency"].get("errors", {})
    wrk_errors = measured["saturation"].get("errors", {})
    assert isinstance(loadgen_errors, Mapping) and isinstance(wrk_errors, Mapping)
    return sum(int(count) for count in (*loadgen_errors.values(), *wrk_errors.values()))


def added_latency_ms(proxied: Measured, direct: Measured) -> dict[str, float]:
    """Return proxied minus direct latency at p50 and p99, in milliseconds.

    These are differences of percentiles, not percentiles of per-request differences.
    """
    return {
        quantile: round(_latency_ms(proxied, quantile) - _latency_ms(direct, quantile), 3)
        for quantile in ("p50", "p99")
    }


# Below this CPU use of the proxy under wrk, the saturation rate may be the harness's limit.
MIN_PROXY_CPU_PERCENT = 90.0
# Above this spread of the saturation rate between rounds, the machine was not steady.
MAX_ROUND_SPREAD = 0.15


def server_cpu_percent(measured: Measured) -> float:
    """Return the CPU percent the measured server used during the wrk run, NaN if unknown."""
    value = measured["saturation"].get("server_cpu_percent")
    return float(value) if isinstance(value, int | float) else math.nan


def rps_per_cpu(measured: Measured) -> float:
    """Return the saturation rate per CPU the server used (rps / CPU fraction), NaN if unknown.

    Unlike the plain rate, this hardly changes when other load takes CPU time from the server.
    """
    cpu = server_cpu_percent(measured)
    return _rps(measured) / (cpu / 100.0) if cpu > 0 else math.nan


def _spread(measured: Measured) -> float:
    value = measured["saturation"].get("rps_spread")
    return float(value) if isinstance(value, int | float) else math.nan


def _harness_warnings(floor: Measured, gateway: Measured) -> list[str]:
    warnings = []
    for label, measured in (("floor", floor), ("gateway", gateway)):
        busy = server_cpu_percent(measured)
        if busy < MIN_PROXY_CPU_PERCENT:
            warnings.append(
                f"the {label} used only {busy:.0f}% of a CPU under wrk, so its saturation rate "
                "may be limited by the upstream, wrk or other load on the machine"
            )
        if _spread(measured) > MAX_ROUND_SPREAD:
            warnings.append(
                f"the {label}'s saturation rate varied by {_spread(measured):.0%} between "
                "rounds, so the machine was not steady"
            )
    return warnings


def compare_case(upstream: Measured, floor: Measured, gateway: Measured) -> dict[str, object]:
    """Compare one gateway measurement with the floor and check it against the targets."""
    floor_added = added_latency_ms(floor, upstream)
    gateway_added = added_latency_ms(gateway, upstream)
    ratio = _rps(gateway) / _rps(floor) if _rps(floor) > 0 else math.nan
    cpu_ratio = rps_per_cpu(gateway) / rps_per_cpu(floor)
    p50_over_floor = round(gateway_added["p50"] - floor_added["p50"], 3)
    p99_over_floor = round(gateway_added["p99"] - floor_added["p99"], 3)
    errors = error_count(gateway)
    targets = {
        "saturation_ratio": {
            "value": round(ratio, 3),
            "target": f">= {TARGET_SATURATION_RATIO:.2f}",
            "pass": ratio >= TARGET_SATURATION_RATIO,
        },
        "added_p99_over_floor_ms": {
            "value": p99_over_floor,
            "target": f"<= {TARGET_P99_OVER_FLOOR_MS:.2f}",
            "pass": p99_over_floor <= TARGET_P99_OVER_FLOOR_MS,
        },
        "errors": {"value": errors, "target": "== 0", "pass": errors == 0},
    }
    return {
        "floor_added_ms": floor_added,
        "gateway_added_ms": gateway_added,
        "saturation_ratio": round(ratio, 3),
        "rps_per_cpu_ratio": round(cpu_ratio, 3),
        "added_p50_over_floor_ms": p50_over_floor,
        "added_p99_over_floor_ms": p99_over_floor,
        "targets": targets,
        "pass": all(bool(target["pass"]) for target in targets.values()),
        "warnings": _harness_warnings(floor, gateway),
    }


def compare_with_baseline(
    comparison: dict[str, object], baseline_name: str, baseline: Measured, gateway: Measured
) -> None:
    """Add the saturation rate against ``baseline`` and its target to ``comparison``."""
    ratio = _rps(gateway) / _rps(baseline) if _rps(baseline) > 0 else math.nan
    cpu_ratio = rps_per_cpu(gateway) / rps_per_cpu(baseline)
    comparison["baseline"] = {
        "case": baseline_name,
        "saturation_ratio": round(ratio, 3),
        "rps_per_cpu_ratio": round(cpu_ratio, 3),
    }
    targets = comparison["targets"]
    assert isinstance(targets, dict)
    targets["baseline_saturation_ratio"] = {
        "value": round(ratio, 3),
        "target": f">= {TARGET_BASELINE_RATIO:.2f}",
        "pass": ratio >= TARGET_BASELINE_RATIO,
    }
    comparison["pass"] = all(bool(target["pass"]) for target in targets.values())


_HEADER = (
    f"{'target':<24}{'sat rps':>9}{'spread':>8}{'vs floor':>9}{'rps/CPU':>9}{'p50 ms':>8}"
    f"{'p99 ms':>8}{'add p50':>9}{'add p99':>9}{'errors':>7}{'CPU':>6}"
)


def _optional(value: float, spec: str, suffix: str = "") -> str:
    return "-" if math.isnan(value) else f"{value:{spec}}{suffix}"


def _row(label: str, measured: Measured, floor: Measured, upstream: Measured) -> str:
    ratio = _rps(measured) / _rps(floor) if _rps(floor) > 0 else math.nan
    added = {"p50": math.nan, "p99": math.nan}
    if measured is upstream:
        ratio = math.nan
    else:
        added = added_latency_ms(measured, upstream)
    cells = [
        f"{label:<24}",
        f"{_rps(measured):>9.0f}",
        f"{_optional(_spread(measured) * 100, '.0f', '%'):>8}",
        f"{_optional(ratio * 100, '.0f', '%'):>9}",
        f"{_optional(rps_per_cpu(measured), '.0f'):>9}",
        f"{_latency_ms(measured, 'p50'):>8.3f}",
        f"{_latency_ms(measured, 'p99'):>8.3f}",
        f"{_optional(added['p50'], '+.3f'):>9}",
        f"{_optional(added['p99'], '+.3f'):>9}",
        f"{error_count(measured):>7}",
        f"{_optional(server_cpu_percent(measured), '.0f', '%'):>6}",
    ]
    return "".join(cells)


def _target_lines(name: str, comparison: Mapping[str, object], enforced: bool) -> list[str]:
    targets = comparison["targets"]
    warnings = comparison.get("warnings", [])
    assert isinstance(targets, Mapping) and isinstance(warnings, list)
    ratio = targets["saturation_ratio"]
    p99 = targets["added_p99_over_floor_ms"]
    errors = targets["errors"]
    verdict = {True: "PASS", False: "FAIL"}
    scope = "" if enforced else " (informational: --check ignores these targets)"
    lines = [
        f"{name} against the floor{scope}:",
        f"  saturation rate {ratio['value']:.0%} of the floor's "
        f"(target >= {TARGET_SATURATION_RATIO:.0%}): {verdict[ratio['pass']]}",
        f"  added latency minus the floor's: p50 {comparison['added_p50_over_floor_ms']:+.3f} ms, "
        f"p99 {p99['value']:+.3f} ms (target p99 <= +{TARGET_P99_OVER_FLOOR_MS:.2f} ms): "
        f"{verdict[p99['pass']]}",
        f"  failed requests: {errors['value']} (target 0): {verdict[errors['pass']]}",
        f"  requests per CPU second: {comparison['rps_per_cpu_ratio']:.0%} of the floor's "
        "(for reference, no target)",
        *(f"  NOTE: {warning}" for warning in warnings),
    ]
    baseline = comparison.get("baseline")
    if isinstance(baseline, Mapping):
        target = targets["baseline_saturation_ratio"]
        lines += [
            f"  saturation rate {baseline['saturation_ratio']:.0%} of {baseline['case']}'s "
            f"(target >= {TARGET_BASELINE_RATIO:.0%}): {verdict[target['pass']]}; requests per "
            f"CPU second {baseline['rps_per_cpu_ratio']:.0%} of its",
        ]
    return lines


def render_table(result: Mapping[str, object]) -> str:
    """Render the run as text: one table per workload, then the target checks of its cases."""
    workloads = result["workloads"]
    cases = result["cases"]
    assert isinstance(workloads, Mapping) and isinstance(cases, list)
    lines: list[str] = []
    for workload_name, workload in workloads.items():
        upstream, floor = workload["upstream"], workload["floor"]
        lines += ["", f"== {workload['title']} ({workload_name}) ==", _HEADER]
        lines.append(_row("upstream (direct)", upstream, floor, upstream))
        lines.append(_row("floor proxy", floor, floor, upstream))
        checks: list[str] = []
        for case in cases:
            if case["workload"] != workload_name:
                continue
            if case.get("gateway") is None:
                lines.append(f"{case['name']:<24}not measured: {case['skipped']}")
                continue
            lines.append(_row(case["name"], case["gateway"], floor, upstream))
            enforced = bool(case.get("targets_enforced", True))
            checks += _target_lines(case["name"], case["comparison"], enforced)
        if checks:
            lines += ["", *checks]
    return "\n".join(lines)


def write_json(result: Mapping[str, object], out_dir: Path, run_id: str) -> Path:
    """Write the result as indented JSON to ``out_dir/gateway-RUN_ID.json`` and return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gateway-{run_id}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return path
