"""The counting side of the benchmark servers (SMTP sink, Twilio and FCM fakes).

Each server runs in its own process and records one key per accepted message
(the recipient). A tiny HTTP endpoint on 127.0.0.1 lets the benchmark read the
counts, wait for a count and reset between legs:

    GET  /stats                       {"received", "distinct", "duplicates", "first_at", "last_at"}
    GET  /wait?count=N&timeout=T      blocks until N received (or T seconds), then /stats
    GET  /keys                        {"keys": [...]}  every distinct key since the last reset
    GET  /arrivals?prefix=P           {"arrivals": {key: first arrival}} for keys starting with P
    POST /reset

`first_at`/`last_at` are `time.monotonic()` of the first and last arrival:
CLOCK_MONOTONIC is system-wide on Linux, so the benchmark can compare them
with its own clock.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_WAIT = 600.0  # seconds one /wait may block


class Arrivals:
    """Thread-safe count of accepted messages, keyed so duplicates show."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._keys: Counter[str] = Counter()
        self._arrived: dict[str, float] = {}  # key -> its first arrival, for per-message latency
        self._received = 0
        self._first_at: float | None = None
        self._last_at: float | None = None

    def add(self, key: str) -> None:
        now = time.monotonic()
        with self._changed:
            self._keys[key] += 1
            self._arrived.setdefault(key, now)
            self._received += 1
            if self._first_at is None:
                self._first_at = now
            self._last_at = now
            self._changed.notify_all()

    def reset(self) -> None:
        with self._changed:
            self._keys.clear()
            self._arrived.clear()
            self._received = 0
            self._first_at = self._last_at = None

    def stats(self) -> dict[str, Any]:
        with self._changed:
            return self._stats()

    def wait(self, count: int, timeout: float) -> dict[str, Any]:
        with self._changed:
            self._changed.wait_for(lambda: self._received >= count, timeout=min(timeout, MAX_WAIT))
            return self._stats()

    def keys(self) -> list[str]:
        with self._changed:
            return list(self._keys)

    def arrivals(self, prefix: str) -> dict[str, float]:
        with self._changed:
            return {k: t for k, t in self._arrived.items() if k.startswith(prefix)}

    def _stats(self) -> dict[str, Any]:
        return {
            "received": self._received,
            "distinct": len(self._keys),
            "duplicates": self._received - len(self._keys),
            "first_at": self._first_at,
            "last_at": self._last_at,
        }


def serve_control(arrivals: Arrivals, port: int = 0) -> ThreadingHTTPServer:
    """Start the control endpoint in a daemon thread; its port is `server_address[1]`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/stats":
                self._json(arrivals.stats())
            elif url.path == "/wait":
                self._json(arrivals.wait(int(query["count"]), float(query.get("timeout", "1"))))
            elif url.path == "/keys":
                self._json({"keys": arrivals.keys()})
            elif url.path == "/arrivals":
                self._json({"arrivals": arrivals.arrivals(query.get("prefix", ""))})
            else:
                self.send_error(404)

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/reset":
                self.send_error(404)
                return
            arrivals.reset()
            self._json({"reset": True})

        def _json(self, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.1,), name="control", daemon=True).start()
    return server


def write_ready(path: Path, info: dict[str, Any]) -> None:
    """Announce the server's addresses: written whole, so a reader never sees half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def serve_until_signalled() -> None:
    """Block until SIGTERM or SIGINT (or the parent dies: see Processes in _harness)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    parent = os.getppid()
    while not stop.wait(0.5):
        if os.getppid() != parent:  # orphaned: the benchmark is gone
            break
