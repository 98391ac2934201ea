"""Processes the tests start: bound to 127.0.0.1, stopped by PID, bounded in time.

`serve` starts a command in its own session with its output in a log file (never a pipe, which a
chatty server could fill and block on), waits until ``ready()`` or the deadline, and stops the
whole process group on exit: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    return ready


def stop(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the process group, SIGKILL it if it has not exited after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)


@contextlib.contextmanager
def serve(
    cmd: Sequence[str], log: Path, ready: Callable[[], bool], *, env: dict | None = None,
    deadline: float = 90,
) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        end = time.monotonic() + deadline
        while not ready():
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"{cmd[0]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield proc
    finally:
        stop(proc)
