"""Start the servers of a run: the mock upstream, the floor proxy and the gateway cases."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.cases import (
    FAKE_UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
    VIRTUAL_KEY,
    Case,
    GatewayContext,
    Workload,
)
from harness.machine import CpuPlan
from harness.measure import MeasureSettings, Target, TargetRecord, prepare_target
from harness.procs import ProcessGroup, free_port, pinned, wait_for_port

__all__ = [
    "AUTHORIZATION",
    "DEFAULT_GATEWAY_CMD",
    "FLOOR_STAND_IN_CMD",
    "RunContext",
    "check_gateway_command",
    "start_floor",
    "start_gateway",
    "start_upstream",
    "upstream_target",
]

logger = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SMARTFLOW = Path(PYTHON).parent / "smartflow"
DEFAULT_GATEWAY_CMD = f"{SMARTFLOW} gateway --config {{config}}"
FLOOR_STAND_IN_CMD = "{python} {bench_dir}/floor_proxy.py --port {port} --upstream {upstream_url}"
AUTHORIZATION = f"Bearer {VIRTUAL_KEY}"
_GATEWAY_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RunContext:
    """Everything the measuring steps of one run share."""

    procs: ProcessGroup
    settings: MeasureSettings
    plan: CpuPlan
    work_dir: Path
    upstream_url: str
    upstream_pgid: int
    gateway_cmd: str
    # The reason the gateway cannot run, or None when it can.
    gateway_missing: str | None


def check_gateway_command() -> str | None:
    """Return why ``smartflow gateway --help`` does not work, or None when it does."""
    if not SMARTFLOW.exists():
        return f"{SMARTFLOW} does not exist"
    try:
        result = subprocess.run(
            [str(SMARTFLOW), "gateway", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`smartflow gateway --help` failed: {exc!r}"
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
        return f"`smartflow gateway --help` exited with code {result.returncode}: {last}"
    return None


def start_upstream(procs: ProcessGroup, plan: CpuPlan) -> tuple[str, int]:
    """Start the mock upstream and return its base URL and process id."""
    port = free_port()
    argv = [PYTHON, str(BENCH_DIR / "mock_upstream.py"), "--port", str(port)]
    started = procs.start("upstream", pinned(argv, plan.upstream))
    wait_for_port(port, started)
    return f"http://127.0.0.1:{port}", started.process.pid


def upstream_target(run: RunContext, workload: Workload) -> TargetRecord:
    """Prepare the upstream itself as a target, for the direct reference figures."""
    target = Target(
        "upstream",
        run.upstream_url,
        workload.upstream_request,
        AUTHORIZATION,
        server_pgid=run.upstream_pgid,
        reference_only=True,
    )
    return prepare_target(target, run.work_dir, f"upstream-{workload.name}")


def start_floor(run: RunContext, workload: Workload, servers: contextlib.ExitStack) -> TargetRecord:
    """Start the floor proxy on the proxy CPU until ``servers`` closes, and probe it."""
    port = free_port()
    argv = [PYTHON, str(BENCH_DIR / "floor_proxy.py"), "--port", str(port),
            "--upstream", run.upstream_url]  # fmt: skip
    name = f"floor-{workload.name}"
    started = servers.enter_context(run.procs.running(name, pinned(argv, run.plan.proxy)))
    wait_for_port(port, started)
    target = Target(
        "floor",
        f"http://127.0.0.1:{port}",
        workload.upstream_request,
        AUTHORIZATION,
        server_pgid=started.process.pid,
    )
    return prepare_target(target, run.work_dir, name)


def _gateway_argv(run: RunContext, config_path: Path, port: int) -> list[str]:
    command = run.gateway_cmd.format(
        config=config_path,
        port=port,
        upstream_url=run.upstream_url,
        python=PYTHON,
        bench_dir=BENCH_DIR,
    )
    return shlex.split(command)


def start_gateway(run: RunContext, case: Case, servers: contextlib.ExitStack) -> TargetRecord:
    """Write the case's config, start the gateway on the proxy CPU, and probe it."""
    port = free_port()
    case_dir = run.work_dir / case.name
    case_dir.mkdir(parents=True, exist_ok=True)
    context = GatewayContext(port=port, upstream_url=run.upstream_url, workdir=case_dir)
    config_path = run.work_dir / f"config-{case.name}.yaml"
    config_path.write_text(yaml.safe_dump(case.build_config(context), sort_keys=False))
    env = {**os.environ, UPSTREAM_KEY_ENV: FAKE_UPSTREAM_KEY, **case.env}
    argv = pinned(_gateway_argv(run, config_path, port), run.plan.proxy)
    started = servers.enter_context(run.procs.running(case.name, argv, env))
    wait_for_port(port, started, timeout_s=_GATEWAY_START_TIMEOUT_S)
    target = Target(
        case.name,
        f"http://127.0.0.1:{port}",
        case.workload.gateway_request,
        AUTHORIZATION,
        server_pgid=started.process.pid,
    )
    return prepare_target(target, run.work_dir, case.name)
