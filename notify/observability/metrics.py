"""A worker's Prometheus metrics: what its attempts and its sweep did, served on /metrics.

The delivery code (notify.delivery) tells a `Metrics`; the base class records
nothing, so with NOTIFY_METRICS_PORT unset an outcome costs one empty method
call. `Prometheus` records into prometheus_client's multiprocess files (one
directory per worker, `PROMETHEUS_MULTIPROC_DIR`), so the counts of every
prefork child add up in what the worker's main process serves; the threads
pool runs the same path in one process.

No label holds an address, a delivery id or a reason: channels, providers,
statuses and outcomes are notify's own short names, and a provider's error
code is kept only if it looks like one (`bounded`), else "other".
"""

from __future__ import annotations

import enum
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from notify.errors import ConfigurationError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

log = logging.getLogger("notify.metrics")

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable
DIRECTORY_PREFIX = "notify-metrics-"  # then the worker's pid: a fresh directory per worker start
OTHER = "other"
NONE = "none"
MAX_CODES = 64  # distinct error codes one process labels, per (channel, provider); later ones are "other"
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,31}")
# Seconds: an attempt is a provider call (a timeout ends it well before 120 s); a delivery may
# wait out retries and backoff for hours.
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
DELIVERY_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    21600.0,
    86400.0,
)

# name: (kind, labels, help); tests/test_metrics.py checks the dashboards against these names.
WORKER_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "notify_deliveries": (
        "counter",
        ("channel", "provider", "status"),
        "Deliveries this worker ended: sent, failed, suppressed.",
    ),
    "notify_attempts": (
        "counter",
        ("channel", "provider", "outcome"),
        "Tries recorded, by outcome: sent, retry, failed, unknown, paused.",
    ),
    "notify_attempt_seconds": ("histogram", ("channel", "provider"), "How long a provider call took."),
    "notify_delivery_seconds": (
        "histogram",
        ("channel", "priority"),
        "From send() (the delivery's creation in the store) to sent.",
    ),
    "notify_provider_errors": (
        "counter",
        ("channel", "provider", "code"),
        "Errors a provider call raised, by the provider's code.",
    ),
    "notify_circuit_open": (
        "gauge",
        ("channel", "provider"),
        "1 while the provider is paused (sends nothing), else 0.",
    ),
    "notify_recovered": (
        "counter",
        ("channel",),
        "Deliveries the sweep took over from a worker declared dead.",
    ),
}


class AttemptOutcome(enum.StrEnum):
    """What a try came to, as `notify_attempts_total` counts it."""

    SENT = "sent"
    RETRY = "retry"  # a transient failure: tried again later
    FAILED = "failed"  # failed for good, or gave up after max_attempts
    UNKNOWN = "unknown"  # it may have been sent: failed, never tried again
    PAUSED = "paused"  # the provider was paused: not counted as a try


def bounded(value: str | None, default: str = NONE) -> str:
    """`value` as a label: a short token as it is, anything else (spaces, an address, 33+
    characters) "other"; None or empty `default`."""
    if not value:
        return default
    return value if _TOKEN.fullmatch(value) else OTHER


class Metrics:
    """What delivery code tells the metrics. This base records nothing: metrics off."""

    enabled = False

    def attempted(self, channel: str, provider: str, outcome: str) -> None:
        """A try recorded its outcome: sent, retry, failed, unknown (maybe sent), paused."""

    def called(self, channel: str, provider: str, seconds: float, error: BaseException | None) -> None:
        """A provider call ended after `seconds`, with `error` if it raised."""

    def finished(self, channel: str, provider: str, status: str) -> None:
        """A delivery reached a final status this process recorded."""

    def delivered(self, channel: str, priority: str, seconds: float) -> None:
        """A delivery was sent `seconds` after send() recorded it."""

    def paused(self, channel: str, provider: str, paused: bool) -> None:
        """The provider is paused (its circuit open), or sends again."""

    def recovered(self, channels: Iterable[str]) -> None:
        """The sweep took these deliveries (one channel each) over from a dead worker."""


OFF = Metrics()


class Prometheus(Metrics):
    """Metrics into prometheus_client objects. In multiprocess mode no registry holds them:
    the serving process reads every process's files instead (`serve`)."""

    enabled = True

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def made(name: str, **extra: Any) -> Any:
            kind, labels, text = WORKER_METRICS[name]
            cls = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[kind]
            return cls(name, text, labels, registry=registry, **extra)

        self._deliveries = made("notify_deliveries")
        self._attempts = made("notify_attempts")
        self._attempt_seconds = made("notify_attempt_seconds", buckets=ATTEMPT_BUCKETS)
        self._delivery_seconds = made("notify_delivery_seconds", buckets=DELIVERY_BUCKETS)
        self._errors = made("notify_provider_errors")
        self._circuit = made("notify_circuit_open", multiprocess_mode="livemax")
        self._recovered = made("notify_recovered")
        self._codes: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()

    def attempted(self, channel: str, provider: str, outcome: str) -> None:
        self._attempts.labels(bounded(channel), bounded(provider), outcome).inc()

    def called(self, channel: str, provider: str, seconds: float, error: BaseException | None) -> None:
        channel, provider = bounded(channel), bounded(provider)
        self._attempt_seconds.labels(channel, provider).observe(seconds)
        if error is not None:
            self._errors.labels(channel, provider, self._code(channel, provider, error)).inc()

    def finished(self, channel: str, provider: str, status: str) -> None:
        self._deliveries.labels(bounded(channel), bounded(provider), status).inc()

    def delivered(self, channel: str, priority: str, seconds: float) -> None:
        self._delivery_seconds.labels(bounded(channel), bounded(priority)).observe(max(0.0, seconds))

    def paused(self, channel: str, provider: str, paused: bool) -> None:
        self._circuit.labels(bounded(channel), bounded(provider)).set(1 if paused else 0)

    def recovered(self, channels: Iterable[str]) -> None:
        for channel in channels:
            self._recovered.labels(bounded(channel)).inc()

    def _code(self, channel: str, provider: str, error: BaseException) -> str:
        """The error's code as a label: the provider's own if it is a short token and one of the
        first MAX_CODES seen for this provider, "configuration" for bad settings, else "other"."""
        if isinstance(error, ConfigurationError):
            return "configuration"
        code = bounded(getattr(error, "code", None))
        with self._lock:
            seen = self._codes.setdefault((channel, provider), set())
            if code not in seen and len(seen) >= MAX_CODES:
                return OTHER
            seen.add(code)
        return code


@dataclass
class Served:
    """A /metrics endpoint of this process, and its multiprocess directory (removed at `close`)."""

    server: WSGIServer
    thread: threading.Thread
    directory: str

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)
        if os.environ.get(MULTIPROC_DIR) == self.directory:
            del os.environ[MULTIPROC_DIR]


def serve(port: int) -> tuple[Prometheus, Served]:
    """Serve /metrics on `port` (every address) from a fresh multiprocess directory, and the
    metrics this process and the pool processes it forks later record into it.

    ConfigurationError, naming NOTIFY_METRICS_PORT, if the port cannot be bound
    (in use, say). Call before prometheus_client is first imported in this process
    and before the pool forks: both read PROMETHEUS_MULTIPROC_DIR then.
    """
    _remove_stale_directories()
    directory = tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-")
    os.environ[MULTIPROC_DIR] = directory
    try:
        _require_multiprocess_mode()
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # untyped module
        try:
            server, thread = start_http_server(port, registry=registry)
        except OSError as exc:
            raise ConfigurationError(
                f"NOTIFY_METRICS_PORT {port} cannot be served: {exc.strerror or exc}",
                setting="NOTIFY_METRICS_PORT",
            ) from None
        metrics = Prometheus()
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        del os.environ[MULTIPROC_DIR]
        raise
    log.info("metrics on http://0.0.0.0:%d/metrics", port)
    return metrics, Served(server, thread, directory)


def _remove_stale_directories() -> None:
    """The directories of workers that died without cleaning up (SIGKILL, OOM): their process is gone."""
    for path in Path(tempfile.gettempdir()).glob(f"{DIRECTORY_PREFIX}*-*"):
        pid = path.name.removeprefix(DIRECTORY_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _require_multiprocess_mode() -> None:
    """prometheus_client picks its value class when first imported: if something imported it
    before the directory was set, the pool processes' counts would never reach /metrics."""
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        raise ConfigurationError(
            "prometheus_client was imported before the worker set PROMETHEUS_MULTIPROC_DIR; "
            "set PROMETHEUS_MULTIPROC_DIR to an empty directory before starting the worker",
            setting="NOTIFY_METRICS_PORT",
        )


def process_ended(pid: int) -> None:
    """A pool process ends: its gauges leave /metrics (its counters stay counted)."""
    directory = os.environ.get(MULTIPROC_DIR)
    if directory and os.path.isdir(directory):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]  # untyped module
