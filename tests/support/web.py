"""`notify web` as a real process for tests: a free loopback port, ready once /healthz answers."""

from __future__ import annotations

import socket
from pathlib import Path

import requests

from tests.support.processes import Notify, wait_for

SECRET_KEY = "test-secret-key-" + "k" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Web(Notify):
    """`notify web --port P` on 127.0.0.1; `url` is its base (and NOTIFY_PUBLIC_URL, set by `web_env`)."""

    def __init__(self, env: dict[str, str], log: Path, port: int) -> None:
        super().__init__(["web", "--port", str(port), "-l", "info"], env, log)
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 30.0) -> Web:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"notify web exited with {self.process.returncode}:\n{self.output()}")
            try:
                return requests.get(self.url + "/healthz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(ready, timeout=timeout, what="notify web to answer /healthz")
        return self


def web_env(env: dict[str, str]) -> int:
    """Give `env` NOTIFY_PUBLIC_URL (a free port, returned) and NOTIFY_SECRET_KEY, for notify web."""
    port = free_port()
    env["NOTIFY_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    env["NOTIFY_SECRET_KEY"] = SECRET_KEY
    return port
