"""The benchmark runner's parts: checks, gateway config, comparisons, pinning and processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from harness.cases import (
    CASES,
    VIRTUAL_KEY,
    Case,
    GatewayContext,
    check_chat_completion,
    check_chat_stream,
    openai_gateway_config,
    usage_gateway_config,
)
from harness.machine import cpu_busy_percent, plan_cpus
from harness.procs import ProcessGroup, wait_for_port
from harness.report import compare_case, compare_with_baseline, render_table
from mock_upstream import COMPLETION_BODY, STREAM_EVENTS

from tests.bench.conftest import BENCH_DIR


def test_checks_accept_mock_replies() -> None:
    assert check_chat_completion(COMPLETION_BODY) is None
    assert check_chat_stream(b"".join(STREAM_EVENTS)) is None


def test_stream_check_rejects_missing_done() -> None:
    problem = check_chat_stream(b"".join(STREAM_EVENTS[:-1]))
    assert problem is not None
    assert "[DONE]" in problem


def test_stream_check_rejects_missing_usage() -> None:
    without_usage = [event for event in STREAM_EVENTS if b'"usage":{' not in event]
    assert len(without_usage) == len(STREAM_EVENTS) - 1
    problem = check_chat_stream(b"".join(without_usage))
    assert problem is not None
    assert "usage" in problem


def test_completion_check_rejects_error_body() -> None:
    problem = check_chat_completion(b'{"error": {"message": "no"}}')
    assert problem is not None
    assert "not a chat.completion" in problem


def test_case_names_are_unique() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))


def test_gateway_config_is_accepted_by_gateway(tmp_path: Path) -> None:
    schema = pytest.importorskip("smartflow.config.schema")
    keys = pytest.importorskip("smartflow.auth.keys")
    context = GatewayContext(port=7999, upstream_url="http://127.0.0.1:9001", workdir=tmp_path)
    config = schema.parse_config(openai_gateway_config(context))
    assert config.server.port == 7999
    assert config.providers["mock"].base_url == "http://127.0.0.1:9001/v1"
    assert config.keys[0].sha256 == keys.hash_key(VIRTUAL_KEY)


Measured = dict[str, dict[str, object]]


def _measured(rps: float, p50: float, p99: float, cpu: float = 99.0) -> Measured:
    return {
        "latency": {"latency_ms": {"p50": p50, "p99": p99}, "errors": {}},
        "saturation": {"rps": rps, "errors": {}, "server_cpu_percent": cpu, "rps_spread": 0.02},
    }


def test_compare_case_passes_within_targets() -> None:
    upstream = _measured(50000, 0.20, 0.40)
    floor = _measured(10000, 0.50, 1.00)
    gateway = _measured(6000, 0.80, 2.90)
    comparison = compare_case(upstream, floor, gateway)
    assert comparison["saturation_ratio"] == 0.6
    assert comparison["floor_added_ms"] == {"p50": 0.3, "p99": 0.6}
    assert comparison["gateway_added_ms"] == {"p50": 0.6, "p99": 2.5}
    assert comparison["added_p99_over_floor_ms"] == 1.9
    assert comparison["pass"] is True
    assert comparison["warnings"] == []


@pytest.mark.parametrize(
    ("gateway", "failed_target"),
    [
        (_measured(5900, 0.8, 2.0), "saturation_ratio"),
        (_measured(9000, 0.8, 3.1), "added_p99_over_floor_ms"),
    ],
)
def test_compare_case_fails_outside_targets(gateway: Measured, failed_target: str) -> None:
    comparison = compare_case(_measured(50000, 0.2, 0.4), _measured(10000, 0.5, 1.0), gateway)
    targets = comparison["targets"]
    assert isinstance(targets, dict)
    assert targets[failed_target]["pass"] is False
    assert comparison["pass"] is False


def test_compare_case_counts_errors_and_warns() -> None:
    gateway = _measured(9000, 0.8, 1.0, cpu=60.0)
    gateway["saturation"]["errors"] = {"status": 3, "timeout": 0}
    gateway["latency"]["errors"] = {"status_502": 2}
    comparison = compare_case(_measured(50000, 0.2, 0.4), _measured(10000, 0.5, 1.0), gateway)
    targets = comparison["targets"]
    assert isinstance(targets, dict)
    assert targets["errors"]["value"] == 5
    assert comparison["pass"] is False
    warnings = comparison["warnings"]
    assert isinstance(warnings, list)
    assert any("only 60% of a CPU" in warning for warning in warnings)


def test_render_table_marks_skipped_cases() -> None:
    result = {
        "workloads": {
            "chat": {
                "title": "non-streamed",
                "upstream": _measured(50000, 0.2, 0.4),
                "floor": _measured(10000, 0.5, 1.0),
            }
        },
        "cases": [
            {"name": "gateway-chat", "workload": "chat", "gateway": None, "skipped": "no gw"},
        ],
    }
    table = render_table(result)
    assert "floor proxy" in table
    assert "gateway-chat            not measured: no gw" in table


def test_plan_cpus_two_cpus() -> None:
    plan = plan_cpus([0, 1])
    assert (plan.proxy, plan.upstream, plan.clients) == ("0", "1", "1")


def test_plan_cpus_four_cpus() -> None:
    plan = plan_cpus([2, 3, 4, 5])
    assert (plan.proxy, plan.upstream, plan.clients) == ("2", "3", "4,5")


def test_plan_cpus_one_cpu_is_unpinned() -> None:
    plan = plan_cpus([0])
    assert plan.proxy is None
    assert "only CPU 0" in plan.note


def test_cpu_busy_percent() -> None:
    busy = cpu_busy_percent({0: (100, 1000), 1: (0, 1000)}, {0: (150, 1100), 1: (0, 1100)})
    assert busy == {"0": 50.0, "1": 0.0}


_STUBBORN_PARENT = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited but is still listed until its parent reaps it.
    state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    return state != "Z"


def test_stop_ends_stubborn_process_group(tmp_path: Path) -> None:
    procs = ProcessGroup(tmp_path, stop_timeout_s=0.5)
    started = procs.start("stubborn", [sys.executable, "-c", _STUBBORN_PARENT])
    deadline = time.monotonic() + 10
    while not started.log_path.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    child_pid = int(started.log_path.read_text().split()[0])
    procs.stop_all()
    assert started.process.returncode is not None
    deadline = time.monotonic() + 5
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid)


def test_wait_for_port_reports_early_exit(tmp_path: Path) -> None:
    procs = ProcessGroup(tmp_path)
    code = "import sys; sys.exit('config file not found')"
    started = procs.start("broken", [sys.executable, "-c", code])
    with pytest.raises(RuntimeError, match="config file not found"):
        wait_for_port(1, started, timeout_s=10)
    procs.stop_all()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_run_with_floor_as_gateway(tmp_path: Path) -> None:
    command = [
        sys.executable, str(BENCH_DIR / "run.py"), "--floor-as-gateway", "--case", "gateway-chat",
        "--rounds", "1", "--wrk-duration", "1", "--wrk-warmup", "0", "--latency-duration", "1",
        "--latency-warmup", "0.2", "--rate", "100", "--out-dir", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "gateway-chat against the floor:" in result.stdout
    assert "saturation rate" in result.stdout
    outputs = list(tmp_path.glob("gateway-*.json"))
    assert len(outputs) == 1
    saved = orjson.loads(outputs[0].read_bytes())
    case = saved["cases"][0]
    assert case["gateway"]["latency"]["ok"] == 100
    assert case["gateway"]["saturation"]["rps"] > 0
    assert case["comparison"]["targets"]["errors"]["pass"] is True
    assert saved["gateway_command"].endswith("--upstream {upstream_url}")


@pytest.mark.parametrize(("usage_rps", "passed"), [(9000, True), (8900, False)])
def test_usage_case_against_its_baseline(usage_rps: float, passed: bool) -> None:
    upstream, floor = _measured(50000, 0.2, 0.4), _measured(12000, 0.5, 1.0)
    events_off, events_on = _measured(10000, 0.8, 1.5), _measured(usage_rps, 0.8, 1.5)
    comparison = compare_case(upstream, floor, events_on)
    compare_with_baseline(comparison, "gateway-chat", events_off, events_on)
    targets = comparison["targets"]
    assert isinstance(targets, dict)
    assert targets["baseline_saturation_ratio"]["pass"] is passed
    assert comparison["pass"] is passed
    assert comparison["baseline"] == {
        "case": "gateway-chat",
        "saturation_ratio": usage_rps / 10000,
        "rps_per_cpu_ratio": usage_rps / 10000,
    }
    result = {
        "workloads": {"chat": {"title": "non-streamed", "upstream": upstream, "floor": floor}},
        "cases": [
            {
                "name": "gateway-usage",
                "workload": "chat",
                "gateway": events_on,
                "comparison": comparison,
            }
        ],
    }
    assert f"saturation rate {usage_rps / 10000:.0%} of gateway-chat's" in render_table(result)


def test_usage_cases_name_baselines_of_their_workload() -> None:
    by_name = {case.name: case for case in CASES}
    with_baseline = [case for case in CASES if case.baseline is not None]
    assert {case.name for case in with_baseline} >= {"gateway-usage", "gateway-usage-stream"}
    for case in with_baseline:
        assert case.baseline in by_name
        assert by_name[case.baseline].workload == case.workload


def test_usage_case_config_turns_events_on(tmp_path: Path) -> None:
    schema = pytest.importorskip("smartflow.config.schema")
    context = GatewayContext(port=7999, upstream_url="http://127.0.0.1:9001", workdir=tmp_path)
    config = schema.parse_config(usage_gateway_config(context))
    assert config.usage.enabled is True
    assert config.state_dir == str(tmp_path / "state")


def test_selecting_usage_case_runs_its_baseline() -> None:
    run = pytest.importorskip("run")
    names = [case.name for case in run._select_cases(["gateway-usage-stream"])]
    assert names == ["gateway-chat-stream", "gateway-usage-stream"]
    names = [case.name for case in run._select_cases(["gateway-chat", "gateway-usage"])]
    assert names == ["gateway-chat", "gateway-usage"]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_case_config_is_accepted(case: Case, tmp_path: Path) -> None:
    schema = pytest.importorskip("smartflow.config.schema")
    context = GatewayContext(port=7999, upstream_url="http://127.0.0.1:9001", workdir=tmp_path)
    config = schema.parse_config(case.build_config(context))
    assert config.telemetry.metrics is (case.name != "gateway-chat-no-metrics")
