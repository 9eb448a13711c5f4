"""Gateway benchmark: saturation rate and added latency of the gateway against a proxy floor.

Usage: .venv/bin/python bench/run.py [--quick] [--case NAME] [--gateway-cmd TEMPLATE]
See bench/README.md for what is measured and how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from harness.cases import CASES, Case, Workload
from harness.machine import (
    CpuPlan,
    cpu_busy_percent,
    ensure_wrk,
    machine_facts,
    plan_cpus,
    read_cpu_times,
)
from harness.measure import MeasureSettings, combine_rounds, measure_round
from harness.procs import ProcessGroup, raise_on_signals
from harness.report import compare_case, compare_with_baseline, render_table, write_json
from harness.servers import (
    DEFAULT_GATEWAY_CMD,
    FLOOR_STAND_IN_CMD,
    RunContext,
    check_gateway_command,
    start_floor,
    start_gateway,
    start_upstream,
    upstream_target,
)

logger = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
BACKGROUND_BUSY_WARN_PERCENT = 10.0


@dataclass(frozen=True)
class RunSetup:
    """Settings decided before any process starts."""

    run_id: str
    work_dir: Path
    plan: CpuPlan
    settings: MeasureSettings
    gateway_cmd: str
    gateway_missing: str | None
    machine: dict[str, object]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--case", action="append", default=[], help="run only this case (repeatable)")
    add("--list-cases", action="store_true", help="list the cases and exit")

    add(
        "--gateway-cmd",
        default=None,
        help="command template that starts the gateway, with the placeholders {config} {port} "
        "{upstream_url} {python} {bench_dir} (default: smartflow gateway --config {config})",
    )
    add(
        "--floor-as-gateway",
        action="store_true",
        help="run the floor proxy in place of the gateway, to test the harness itself",
    )

    add("--quick", action="store_true", help="one round of 2 s per target, to check the setup")
    add("--rounds", type=int, default=2, help="rounds that split each duration (default 2)")
    add("--wrk-duration", type=float, default=10.0, help="measured wrk seconds per target")
    add("--wrk-warmup", type=float, default=2.0, help="wrk warm-up seconds per target")
    add("--connections", type=int, default=32, help="wrk connections (default 32)")
    add("--rate", type=float, default=200.0, help="open-loop requests per second")
    add("--latency-duration", type=float, default=10.0, help="measured open-loop seconds")
    add("--latency-warmup", type=float, default=2.0, help="open-loop warm-up seconds")

    add("--no-pin", action="store_true", help="do not pin processes to CPUs with taskset")
    add("--out-dir", type=Path, default=BENCH_DIR / "out", help="where results and logs go")
    add(
        "--check",
        action="store_true",
        help="exit with code 3 when a target fails or a case could not be measured, "
        "except for cases whose targets are informational",
    )
    add("-v", "--verbose", action="store_true", help="log debug detail")

    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    return args


def _settings(args: argparse.Namespace, wrk: str, plan: CpuPlan) -> MeasureSettings:
    settings = MeasureSettings(
        wrk=wrk,
        rounds=args.rounds,
        wrk_duration_s=args.wrk_duration,
        wrk_warmup_s=args.wrk_warmup,
        wrk_connections=args.connections,
        wrk_threads=len(plan.clients.split(",")) if plan.clients else 1,
        upstream_wrk_duration_s=min(5.0, args.wrk_duration),
        rate=args.rate,
        latency_duration_s=args.latency_duration,
        latency_warmup_s=args.latency_warmup,
        client_cpus=plan.clients,
    )
    if not args.quick:
        return settings
    return replace(
        settings,
        rounds=1,
        wrk_duration_s=2,
        wrk_warmup_s=1,
        upstream_wrk_duration_s=2,
        latency_duration_s=2,
        latency_warmup_s=1,
    )


def _case_entry(case: Case, workload: Workload) -> dict[str, object]:
    return {
        "name": case.name,
        "workload": workload.name,
        "description": case.description,
        "targets_enforced": case.targets_enforced,
    }


def _measure_workload(
    run: RunContext, workload: Workload, cases: list[Case]
) -> tuple[dict[str, object], list[dict[str, object]]]:
    """Measure the upstream, the floor and each gateway case of one workload, in rounds."""
    logger.info("workload %s: starting the floor and %d gateway case(s)", workload.name,
                0 if run.gateway_missing else len(cases))  # fmt: skip
    with contextlib.ExitStack() as servers:
        upstream = upstream_target(run, workload)
        floor = start_floor(run, workload, servers)
        gateways = {}
        if run.gateway_missing is None:
            gateways = {case.name: start_gateway(run, case, servers) for case in cases}
        for round_index in range(run.settings.rounds):
            for record in (upstream, floor, *gateways.values()):
                measure_round(run.procs, run.settings, record, round_index)
    upstream_result, floor_result = combine_rounds(upstream), combine_rounds(floor)
    # combine_rounds consumes a record's samples, so each gateway is combined once.
    combined = {name: combine_rounds(record) for name, record in gateways.items()}
    case_results: list[dict[str, object]] = []
    for case in cases:
        entry = _case_entry(case, workload)
        if case.name in combined:
            gateway = combined[case.name]
            comparison = compare_case(upstream_result, floor_result, gateway)
            if case.baseline is not None and case.baseline in combined:
                baseline = combined[case.baseline]
                compare_with_baseline(comparison, case.baseline, baseline, gateway)
            entry.update(gateway=gateway, comparison=comparison)
        else:
            entry.update(gateway=None, skipped=f"gateway not available: {run.gateway_missing}")
        case_results.append(entry)
    workload_result: dict[str, object] = {
        "title": workload.title,
        "upstream": upstream_result,
        "floor": floor_result,
    }
    return workload_result, case_results


def _run_all(run: RunContext, cases: list[Case]) -> dict[str, object]:
    workloads: dict[str, object] = {}
    case_results: list[dict[str, object]] = []
    for workload in dict.fromkeys(case.workload for case in cases):
        workload_cases = [case for case in cases if case.workload == workload]
        workloads[workload.name], results = _measure_workload(run, workload, workload_cases)
        case_results += results
    return {"workloads": workloads, "cases": case_results}


def _select_cases(names: list[str]) -> list[Case]:
    if not names:
        return list(CASES)
    by_name = {case.name: case for case in CASES}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known cases: {sorted(by_name)}")
    selected = [by_name[name] for name in names]
    baselines = {case.baseline for case in selected if case.baseline is not None}
    # A case's baseline runs first, in the same rounds, so the two see the same machine.
    return [case for case in CASES if case.name in baselines - set(names)] + selected


def _exit_code(result: dict[str, object], check: bool) -> int:
    if not check:
        return 0
    cases = result["cases"]
    assert isinstance(cases, list)
    enforced = [case for case in cases if case.get("targets_enforced", True)]
    passed = all(case.get("comparison", {}).get("pass") is True for case in enforced)
    return 0 if passed else 3


def _background_cpu_busy(seconds: float = 1.0) -> dict[str, float]:
    """Sample how busy each CPU is before the run starts, to flag a machine that is not idle."""
    before = read_cpu_times()
    time.sleep(seconds)
    busy = cpu_busy_percent(before, read_cpu_times())
    loaded = {cpu: value for cpu, value in busy.items() if value > BACKGROUND_BUSY_WARN_PERCENT}
    if loaded:
        logger.warning(
            "the machine is not idle before the run (CPU busy percent %s): "
            "other load makes the figures noisier",
            loaded,
        )
    return busy


def _set_up(args: argparse.Namespace, wrk: str) -> RunSetup:
    plan = plan_cpus(use_taskset=not args.no_pin)
    if args.floor_as_gateway:
        gateway_cmd, gateway_missing = FLOOR_STAND_IN_CMD, None
    elif args.gateway_cmd is not None:
        gateway_cmd, gateway_missing = args.gateway_cmd, None
    else:
        gateway_cmd, gateway_missing = DEFAULT_GATEWAY_CMD, check_gateway_command()
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    work_dir = args.out_dir / "runs" / run_id
    work_dir.mkdir(parents=True, exist_ok=True)
    logger.info("pinning: %s", plan.note)
    if gateway_missing is not None:
        logger.warning(
            "gateway not available, measuring the upstream and floor only: %s", gateway_missing
        )
    else:
        logger.info("gateway command: %s", gateway_cmd)
    machine = machine_facts(wrk)
    machine["background_cpu_busy_percent"] = _background_cpu_busy()
    settings = _settings(args, wrk, plan)
    return RunSetup(run_id, work_dir, plan, settings, gateway_cmd, gateway_missing, machine)


def _measure(args: argparse.Namespace, setup: RunSetup, cases: list[Case]) -> int:
    """Run every case, print the table, write the JSON and return the exit code."""
    procs = ProcessGroup(setup.work_dir / "logs")
    raise_on_signals()
    started = time.monotonic()
    try:
        upstream_url, upstream_pgid = start_upstream(procs, setup.plan)
        run = RunContext(procs, setup.settings, setup.plan, setup.work_dir, upstream_url,
                         upstream_pgid, setup.gateway_cmd, setup.gateway_missing)  # fmt: skip
        measured = _run_all(run, cases)
    except KeyboardInterrupt:
        logger.error("interrupted; stopping every process the benchmark started")
        return 130
    except RuntimeError as exc:
        logger.error("benchmark failed: %s", exc)
        logger.error("process logs are in %s", setup.work_dir / "logs")
        return 1
    finally:
        procs.stop_all()
    result: dict[str, object] = {
        "run_id": setup.run_id,
        "command": [Path(sys.executable).name, *sys.argv],
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": setup.machine,
        "pinning": setup.plan.as_dict(),
        "settings": {k: v for k, v in asdict(setup.settings).items() if k != "wrk"},
        "gateway_command": setup.gateway_cmd,
        "gateway_missing": setup.gateway_missing,
        **measured,
    }
    print(render_table(result))
    print(f"\npinning: {setup.plan.note}")
    if setup.gateway_missing is None:
        print(f"gateway command: {setup.gateway_cmd}")
    print(f"results: {write_json(result, args.out_dir, setup.run_id)}")
    return _exit_code(result, args.check)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table and write the JSON result file."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.list_cases:
        for case in CASES:
            print(f"{case.name:<24}{case.workload.name:<16}{case.description}")
        return 0
    cases = _select_cases(args.case)
    try:
        wrk = ensure_wrk()
    except RuntimeError as exc:
        logger.error("%s", exc)
        return 2
    return _measure(args, _set_up(args, wrk), cases)


if __name__ == "__main__":
    sys.exit(main())
