"""Start, pin, probe and stop the processes of one benchmark run."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

__all__ = [
    "ProcessGroup",
    "Started",
    "free_port",
    "pinned",
    "raise_on_signals",
    "tail_of",
    "wait_for_port",
]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pinned(argv: Sequence[str], cpus: str | None) -> list[str]:
    """Prefix ``argv`` with ``taskset -c CPUS``, or return it unchanged when ``cpus`` is None."""
    if cpus is None:
        return list(argv)
    return ["taskset", "-c", cpus, *argv]


def _die_with_parent() -> None:
    """Ask the kernel to send SIGTERM to this child when the benchmark process dies.

    This runs in the child between fork and exec. It covers a SIGKILL of run.py, when no
    cleanup code of ours can run.
    """
    os.setsid()
    library = ctypes.util.find_library("c")
    if library is not None:
        ctypes.CDLL(library, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Started:
    """One process started by the benchmark, the leader of its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


def tail_of(path: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a log file, or a note when it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(log {path} could not be read: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class ProcessGroup:
    """Processes started during a run. ``stop_all`` ends each of them by its process group id."""

    def __init__(self, log_dir: Path, stop_timeout_s: float = _STOP_TIMEOUT_S) -> None:
        self._log_dir = log_dir
        self._stop_timeout_s = stop_timeout_s
        self._started: list[Started] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Started:
        """Start ``argv`` in its own session, with stdout and stderr going to a log file."""
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"{name}.log"
        logger.debug("starting %s: %s", name, " ".join(argv))
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        started = Started(name, process, log_path)
        self._started.append(started)
        return started

    def run(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None, timeout_s: float
    ) -> tuple[int, str]:
        """Run ``argv`` to completion and return its exit code and output (stdout and stderr).

        The process is tracked like a server, so Ctrl-C or a timeout ends it as well.
        """
        started = self.start(name, argv, env)
        try:
            code = started.process.wait(timeout=timeout_s)
        finally:
            self.stop(started)
        return code, started.log_path.read_text(errors="replace")

    def stop(self, started: Started) -> None:
        """Send SIGTERM to the process group, then SIGKILL after a grace period.

        The leader is reaped only after its group got SIGKILL, so its id cannot have been
        reused by an unrelated process when the signal is sent.
        """
        if started in self._started:
            self._started.remove(started)
        process = started.process
        if process.returncode is not None:
            return  # Reaped already, by a wait or poll that saw it exit.
        _signal_group(process.pid, signal.SIGTERM)
        if not _wait_exited(process.pid, self._stop_timeout_s):
            logger.warning(
                "%s (pid %d) ignored SIGTERM; sending SIGKILL", started.name, process.pid
            )
        # SIGKILL also ends any children the process left behind in its group.
        _signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=_STOP_TIMEOUT_S)

    def stop_all(self) -> None:
        """Stop every process still tracked, newest first."""
        for started in reversed(list(self._started)):
            try:
                self.stop(started)
            except (OSError, subprocess.TimeoutExpired) as exc:
                logger.error(
                    "could not stop %s (pid %d): %r", started.name, started.process.pid, exc
                )

    @contextlib.contextmanager
    def running(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> Iterator[Started]:
        """Start a server for the duration of a ``with`` block."""
        started = self.start(name, argv, env)
        try:
            yield started
        finally:
            self.stop(started)


def _wait_exited(pid: int, timeout_s: float) -> bool:
    """Wait for ``pid`` to exit without reaping it. Return False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return True
        time.sleep(0.02)
    return False


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def wait_for_port(port: int, started: Started, timeout_s: float = 20.0) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections.

    Raise RuntimeError with the end of the process log when the process exits first or the
    port stays closed for ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code = started.process.poll()
        if code is not None:
            raise RuntimeError(
                f"{started.name} exited with code {code} before listening on port {port}; "
                f"last lines of {started.log_path}:\n{tail_of(started.log_path)}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"{started.name} did not listen on port {port} within {timeout_s:.0f} s; "
        f"last lines of {started.log_path}:\n{tail_of(started.log_path)}"
    )


class _TerminatedError(KeyboardInterrupt):
    """Raised on SIGTERM or SIGHUP like KeyboardInterrupt on Ctrl-C, so the same cleanup runs."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _TerminatedError(f"received signal {signum}")


def raise_on_signals() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so the children get stopped.

    SIGINT gets Python's default handler back even where the parent shell ignored it, as
    non-interactive shells do for background jobs.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGHUP, _raise_terminated)
