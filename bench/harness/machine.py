"""Machine facts for the record, the CPU pinning plan, and locating (or installing) wrk."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "CpuPlan",
    "cpu_busy_percent",
    "ensure_wrk",
    "group_cpu_seconds",
    "machine_facts",
    "plan_cpus",
    "read_cpu_times",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuPlan:
    """CPU lists, in ``taskset -c`` form, for the proxy under test, the upstream and the clients.

    A None list means the process runs unpinned.
    """

    proxy: str | None
    upstream: str | None
    clients: str | None
    note: str

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


def _cpu_list(cpus: list[int]) -> str:
    return ",".join(str(cpu) for cpu in cpus)


def plan_cpus(available: list[int] | None = None, use_taskset: bool = True) -> CpuPlan:
    """Pin the proxy under test to the first usable CPU and everything else to the others.

    With three or more CPUs the upstream gets the second one and the load generators the rest.
    With one CPU, or without taskset, nothing is pinned and the note states it.
    """
    cpus = sorted(available if available is not None else os.sched_getaffinity(0))
    if not use_taskset or shutil.which("taskset") is None:
        return CpuPlan(None, None, None, "not pinned: taskset is off or missing")
    if len(cpus) < 2:
        return CpuPlan(None, None, None, f"not pinned: only CPU {_cpu_list(cpus)} is usable")
    proxy = str(cpus[0])
    if len(cpus) == 2:
        other = str(cpus[1])
        note = f"proxy under test on CPU {proxy}; upstream and load generators share CPU {other}"
        return CpuPlan(proxy, other, other, note)
    upstream = str(cpus[1])
    clients = _cpu_list(cpus[2:])
    note = (
        f"proxy under test on CPU {proxy}; upstream on CPU {upstream}; "
        f"load generators on CPUs {clients}"
    )
    return CpuPlan(proxy, upstream, clients, note)


def read_cpu_times() -> dict[int, tuple[int, int]]:
    """Read (busy, total) clock ticks per CPU from /proc/stat, or nothing when it is unreadable."""
    times: dict[int, tuple[int, int]] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError as exc:
        logger.warning("could not read /proc/stat: %s", exc)
        return times
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        # user nice system idle iowait irq softirq steal; guest time is counted in user.
        # Time stolen by the hypervisor counts as not busy.
        ticks = [int(value) for value in fields[:8]]
        not_busy = ticks[3] + ticks[4] + ticks[7]
        times[int(name[3:])] = (sum(ticks) - not_busy, sum(ticks))
    return times


def cpu_busy_percent(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> dict[str, float]:
    """Return how busy each CPU was between two ``read_cpu_times`` readings, in percent."""
    busy: dict[str, float] = {}
    for cpu, (busy_after, total_after) in after.items():
        busy_before, total_before = before.get(cpu, (0, 0))
        elapsed = total_after - total_before
        if elapsed > 0:
            busy[str(cpu)] = round(100.0 * (busy_after - busy_before) / elapsed, 1)
    return busy


def group_cpu_seconds(pgid: int) -> float:
    """Return the user plus system CPU seconds used so far by the live processes of a group.

    Processes that already exited are not counted, so take the difference of two readings
    only over a span in which the group keeps its processes.
    """
    ticks = 0
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_path.read_text()
        except OSError:
            continue  # The process exited between the listing and the read.
        # Fields after the command name, which is in brackets and may contain spaces:
        # state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime.
        fields = text.rpartition(")")[2].split()
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError as exc:
        logger.warning("could not read /proc/cpuinfo: %s", exc)
    return platform.processor() or "unknown"


def _command_version(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (result.stdout + result.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine_facts(wrk: str | None) -> dict[str, object]:
    """Collect what a reader needs to compare runs: CPUs, CPU model, Python, kernel, wrk."""
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "wrk": _command_version([wrk, "-v"]) if wrk else None,
    }


def _apt_get(apt: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run([apt, *args], capture_output=True, text=True, env=env, check=False)


def ensure_wrk() -> str:
    """Return the path of wrk, installing the Debian package first when run as root.

    Raises RuntimeError with what to do when wrk is missing and cannot be installed.
    """
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError(
            "wrk is not installed and this is not root, so it cannot be installed here: "
            "run `sudo apt-get install -y wrk` (Debian package wrk) and try again"
        )
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError("wrk is not installed and apt-get is missing: install wrk by hand")
    logger.info("wrk is missing; installing it with apt-get install -y wrk")
    result = _apt_get(apt, "install", "-y", "wrk")
    if result.returncode != 0:
        # The package lists may be missing or stale on a fresh machine.
        logger.info("apt-get install failed; running apt-get update and trying again")
        _apt_get(apt, "update")
        result = _apt_get(apt, "install", "-y", "wrk")
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError(
            "apt-get install -y wrk did not provide wrk: "
            f"{result.stderr.strip()[-500:] or 'no error output'}"
        )
    return found
