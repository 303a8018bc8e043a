"""What a worker runs beside Celery's pool, in one ordered list, started and stopped by one mechanism.

    SERVICES = (Metrics, Heartbeat, Maintenance, Gate, Attempts, ExpressLanes)

They start in that order and stop in the reverse one, whatever the pool:

- a service `PER_PROCESS` runs in every process that runs tasks (the worker's
  own for the threads and solo pools, each child of a prefork pool), started
  before its first task and stopped after its last;
- a service `PER_WORKER` runs once, in the worker's main process.

A warm shutdown (SIGTERM) first `drain`s every service (take no more work),
Celery's pool then finishes its tasks, and only then is each service
`stop`ped, in reverse: the express lanes wait for the attempts they run
before the deliverer closes its providers and the heartbeat stops renewing
their claims. Celery's signals call `boot`, `drain` and `stop`
(notify.worker.app); nothing else starts a thread in a worker.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from celery import Celery

from notify.broker.publisher import Publisher
from notify.broker.routing import consume_queues
from notify.delivery.attempt import Deliverer, longest_attempt, new_heartbeat
from notify.delivery.gate import PriorityGate
from notify.delivery.heartbeat import Heartbeat
from notify.delivery.maintenance import Maintenance
from notify.models import Priority
from notify.observability.metrics import OFF, Metrics, Served, serve
from notify.receipts import Receipts
from notify.settings import Settings, load_hook, load_status_hook
from notify.store import Store
from notify.worker.health import HealthFile

log = logging.getLogger("notify.worker")


class Where(enum.Enum):
    PER_PROCESS = "every process that runs tasks"
    PER_WORKER = "the worker's main process"


@dataclass
class Runtime:
    """One worker process's view: what its services need, and what they made for each other."""

    settings: Settings
    celery: Celery
    channels: tuple[str, ...]
    main: bool  # the worker's main process (a prefork child is not)
    tasks_here: bool  # tasks run in this process
    processes: int = 1  # processes that run tasks (a prefork pool's size): they share a rate limit
    lanes: bool = False  # express lanes may run here (threads and solo pools, in the main process)
    heartbeat: Heartbeat | None = None
    gate: PriorityGate | None = None
    deliverer: Deliverer | None = None
    metrics: Metrics = OFF  # what attempts and the sweep are counted by
    events_from: str | None = None  # the node name task events are sent as (-E), or None: none sent

    def applies(self, where: Where) -> bool:
        return self.tasks_here if where is Where.PER_PROCESS else self.main

    def for_pool_process(self) -> Runtime:
        """The runtime of a prefork child of this (main) process."""
        return Runtime(
            self.settings, self.celery, self.channels, False, True, self.processes, metrics=self.metrics
        )

    @classmethod
    def unbooted(cls, celery: Celery) -> Runtime:
        """For a process that runs tasks but whose worker did not pass on its runtime (a pool
        process started by spawn rather than fork): its own from the settings, the full rate."""
        from notify.settings import get_settings

        return cls(get_settings(), celery, (), False, True)


class Service:
    """Something a worker runs beside its tasks; `where` says in which of its processes."""

    where: ClassVar[Where]

    def start(self, runtime: Runtime) -> None:
        raise NotImplementedError

    def drain(self) -> None:
        """Take no more work (a warm shutdown has begun); what is in flight goes on."""

    def stop(self) -> None:
        """Wait for the work in flight, then release what it used."""


class MetricsService(Service):
    """Serves /metrics on NOTIFY_METRICS_PORT, if set: first, so that the pool processes forked
    later write where this process reads (prometheus_client's multiprocess mode)."""

    where = Where.PER_WORKER

    def start(self, runtime: Runtime) -> None:
        self.served: Served | None = None
        if runtime.settings.metrics_port is not None:
            runtime.metrics, self.served = serve(runtime.settings.metrics_port)

    def stop(self) -> None:
        if self.served is not None:
            self.served.close()


class HeartbeatService(Service):
    """Renews the claims of the attempts this process runs."""

    where = Where.PER_PROCESS

    def start(self, runtime: Runtime) -> None:
        store = Store(runtime.settings.resolved_database_url, require_current=True)
        runtime.heartbeat = self.heartbeat = new_heartbeat(store, runtime.settings).start()

    def stop(self) -> None:
        self.heartbeat.stop()  # joins its thread, retires this worker
        self.heartbeat.store.close()


class MaintenanceService(Service):
    """Releases what is due, sweeps what nobody works on, purges: for the channels served."""

    where = Where.PER_WORKER

    def start(self, runtime: Runtime) -> None:
        self.maintenance = new_maintenance(
            runtime.celery, runtime.settings, runtime.channels, runtime.metrics
        ).start()
        self.maintenance.wait_until_running()  # not ready until it runs: the store may be away

    def stop(self) -> None:
        self.maintenance.stop()  # joins its thread, then closes its store, publisher and backlog


class GateService(Service):
    """Lets a high attempt have this process to itself for a moment."""

    where = Where.PER_PROCESS

    def start(self, runtime: Runtime) -> None:
        runtime.gate = PriorityGate()


class AttemptsService(Service):
    """The deliverer: this process's providers, hook and rate limits, for every attempt it runs."""

    where = Where.PER_PROCESS

    def start(self, runtime: Runtime) -> None:
        settings = runtime.settings
        # A slow attempt's burst-mates are published again, ahead of their priority's backlog.
        self.publisher = Publisher(runtime.celery)
        runtime.deliverer = self.deliverer = Deliverer(
            settings,
            heartbeat=runtime.heartbeat,
            gate=runtime.gate,
            rate_share=1 / runtime.processes,
            on_permanent_failure=load_hook(settings),
            on_status=load_status_hook(settings),
            hand_on=functools.partial(self.publisher.publish, grouped=True, front=True),
            metrics=runtime.metrics,
        )

    def stop(self) -> None:
        self.deliverer.close()
        self.publisher.close()


class ExpressLanesService(Service):
    """Consumers of the high queues beside Celery's, where tasks run in the worker's process."""

    where = Where.PER_WORKER

    def start(self, runtime: Runtime) -> None:
        from notify.worker.express import start_express

        self.bound = longest_attempt(runtime.settings) + runtime.settings.lease
        self.lanes = []
        deliverer = runtime.deliverer
        if runtime.lanes and deliverer is not None:
            self.lanes = start_express(
                runtime.celery, runtime.channels, deliverer.attempt_burst, events_from=runtime.events_from
            )

    def drain(self) -> None:
        for lane in self.lanes:
            lane.stopping()

    def stop(self) -> None:
        for lane in self.lanes:
            lane.stop(timeout=self.bound)


class Backlog:
    """Messages waiting on a channel's queues, read over one broker connection of its own."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery
        self._connection: Any = None

    def __call__(self, channel: str, priority: Priority) -> int | None:
        """How many messages wait ahead of a new one for (`channel`, `priority`): those of its
        priority and the more urgent ones (all of the channel's on RabbitMQ's one priority
        queue), or None if the broker cannot say (the sweep then waits longer)."""
        queues = {q.name: q for q in self.celery.conf.task_queues}
        try:
            if self._connection is None:
                self._connection = self.celery.connection_for_read()
            names = self._names(channel, priority)
            bound = [queues[name](self._connection.default_channel) for name in names]
            # A declare (idempotent, with the queue's own arguments) rather than a
            # passive one: Redis calls an empty queue missing.
            return sum(int(q.queue_declare().message_count) for q in bound)
        except Exception as exc:
            log.warning("cannot read the %s backlog: %s: %s", channel, type(exc).__name__, exc)
            self.close()
            return None

    def _names(self, channel: str, priority: Priority) -> list[str]:
        names = consume_queues(self.celery.conf.broker_url, channel)  # highest priority first
        return names if len(names) == 1 else names[: priority.rank + 1]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = None


def new_maintenance(
    celery: Celery, settings: Settings, channels: tuple[str, ...], metrics: Metrics = OFF
) -> Maintenance:
    """Maintenance for `channels`, publishing through `celery` (not started): a worker's or beat's.

    Its store, publisher and backlog connection are closed when it stops.
    """
    publisher, backlog = Publisher(celery), Backlog(celery)
    store = Store(settings.resolved_database_url, require_current=True)
    health = HealthFile(settings.home)
    return Maintenance(
        store,
        settings,
        # What maintenance publishes has waited already (a due send_at, a dead worker's, a lost
        # message's): ahead of the backlog of its priority.
        functools.partial(publisher.publish, grouped=True, front=True),
        channels=channels,
        backlog=backlog,
        on_stop=(publisher.close, backlog.close, health.remove),
        receipts=Receipts(store, settings, on_status=load_status_hook(settings)),
        metrics=metrics,
        on_pass=health.mark,
    )


SERVICES: tuple[type[Service], ...] = (
    MetricsService,
    HeartbeatService,
    MaintenanceService,
    GateService,
    AttemptsService,
    ExpressLanesService,
)


class Services:
    """The services of one process, started in order and stopped in reverse, each once."""

    def __init__(self, runtime: Runtime, services: Sequence[type[Service]] = SERVICES) -> None:
        self.runtime = runtime
        self._classes = [cls for cls in services if runtime.applies(cls.where)]
        self._started: list[Service] = []
        self._stopped = False

    def start(self) -> Services:
        try:
            for cls in self._classes:
                service = cls()
                service.start(self.runtime)
                self._started.append(service)
        except BaseException:
            self.stop()
            raise
        return self

    def names(self) -> list[str]:
        """The running services' names, in the order they started."""
        return [type(s).__name__.removesuffix("Service") for s in self._started]

    def drain(self) -> None:
        for service in reversed(self._started):
            service.drain()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.drain()
        for service in reversed(self._started):
            try:
                service.stop()
            except Exception:  # the others must still stop
                log.exception("stopping %s failed", type(service).__name__)


_lock = threading.Lock()
_running: dict[int, Services] = {}  # by process id: a forked child starts with none of its parent's
_main: list[Runtime] = []  # the main process's runtime, which a prefork child inherits


def boot(runtime: Runtime) -> Services:
    """Start this process's services, once."""
    with _lock:
        running = _running.get(os.getpid())
        if running is None:
            running = _running[os.getpid()] = Services(runtime).start()
            if runtime.main:
                _main[:] = [runtime]
        return running


def boot_pool_process(celery: Celery) -> Services:
    """Start the services of a pool process: from the runtime of the worker it was forked from,
    else (a process spawned, not forked) from the settings."""
    return boot(_main[0].for_pool_process() if _main else Runtime.unbooted(celery))


def running() -> Services | None:
    """This process's services, if they were started."""
    return _running.get(os.getpid())


def drain() -> None:
    services = running()
    if services is not None:
        services.drain()


def stop() -> None:
    with _lock:
        services = _running.pop(os.getpid(), None)
    if services is not None:
        services.stop()
