"""Real worker processes for tests, and bounded waits."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

PR_SET_PDEATHSIG = 1  # prctl(2)

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


NOTIFY = [sys.executable, "-m", "notify.cli"]
CELERY = [sys.executable, "-m", "celery"]


class Notify:
    """A `notify ...` command (or another `program`) as a subprocess, its log in a file."""

    def __init__(
        self, argv: list[str], env: dict[str, str], log: Path, *, program: list[str] = NOTIFY
    ) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            [*program, *argv],
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_the_tests,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the process and everything it started: no chance to ack or clean up."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()


class Worker(Notify):
    """`notify worker CHANNEL` as a subprocess; with `celery=True`, `celery -A workers.CHANNEL worker`."""

    def __init__(
        self, channel: str, env: dict[str, str], log: Path, *args: str, celery: bool = False
    ) -> None:
        if celery:
            super().__init__(
                ["-A", f"workers.{channel}", "worker", "-l", "info", *args], env, log, program=CELERY
            )
        else:
            super().__init__(["worker", channel, "-l", "info", *args], env, log)
        self.channel = channel

    def wait_ready(self, timeout: float = 60.0) -> Worker:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.output()}")
            return " ready." in self.output()

        wait_for(ready, timeout=timeout, what=f"the {self.channel} worker to be ready")
        return self


def _die_with_the_tests() -> None:
    """In the child, before exec: SIGKILL it when the test process dies (killed, say), so no
    worker outlives its test to take the next test's messages from the shared brokers."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
