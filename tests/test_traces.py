"""Traces: one trace from send() through a real worker to the provider call, on every publish path.

The test process is the producer, with an SDK TracerProvider and an in-memory
exporter; the worker is a real `notify worker` that imports
tests/support/otel_worker.py (Celery's --include) and appends its spans to a file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.app.task import Context
from celery.signals import before_task_publish
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.util._once import Once

from notify.api import Notifier
from notify.errors import PermanentDeliveryError
from notify.models import Intent, Status
from notify.observability import tracing
from notify.store import Claim, NewDelivery
from tests.support import spans as span_files
from tests.support.processes import Worker, wait_for
from tests.support.records import a_worker, record_one

REPO = Path(__file__).resolve().parents[1]
INCLUDE = ("--include", "tests.support.otel_worker")
ADDRESS = "ada.lovelace@example.com"

Span = dict[str, Any]


@pytest.fixture
def producer_spans() -> Iterator[InMemorySpanExporter]:
    """This process traced, as an application configures it; not traced again after the test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    wait_for(tracing.active, timeout=5, what="notify to see the provider (within tracing.RECHECK)")
    yield exporter
    provider.shutdown()
    # The API sets its global provider once per process; the other tests run untraced, as
    # opentelemetry's own test utilities (reset_trace_globals) put it back.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    assert not tracing.active()


@pytest.fixture
def spans_file(env: dict[str, str], tmp_path: Path) -> Path:
    path = tmp_path / "worker-spans.jsonl"
    env[span_files.SPANS_FILE] = str(path)
    return path


def produced(exporter: InMemorySpanExporter) -> list[Span]:
    return [span_files.as_dict(s) for s in exporter.get_finished_spans()]


def worker_spans(path: Path, count: int, also: str | None = None) -> list[Span]:
    """The worker's spans, once `count` deliveries have ended (after the spans within them), and
    a span named `also`."""

    def ended() -> list[Span]:
        found = span_files.read(path)
        names = [s["name"] for s in found]
        return found if names.count("notify.deliver") >= count and (also is None or also in names) else []

    return wait_for(ended, timeout=60, what=f"{count} deliveries' spans from the worker")


def one(spans: list[Span], name: str, **attributes: object) -> Span:
    found = [
        s
        for s in spans
        if s["name"] == name and all(s["attributes"].get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, spans)
    return found[0]


def children(spans: list[Span], parent: Span, name: str) -> list[Span]:
    return [s for s in spans if s["parent_id"] == parent["span_id"] and s["name"] == name]


def assert_one_trace(producer: list[Span], worker: list[Span], root: Span, deliveries: int = 1) -> None:
    """root -> publish -> a deliver span per delivery -> a provider span each, in one trace,
    and no address anywhere in the spans."""
    [publish] = children(producer, root, "notify.publish")
    assert publish["kind"] == "PRODUCER" and publish["attributes"]["notify.deliveries"] == deliveries
    delivered = children(worker, publish, "notify.deliver")
    assert len(delivered) == deliveries, span_files.tree(producer + worker)
    for deliver in delivered:
        assert deliver["kind"] == "CONSUMER" and deliver["attributes"]["notify.outcome"] == "sent"
        [call] = children(worker, deliver, "notify.provider")
        assert call["kind"] == "CLIENT" and call["status"] == "UNSET"
        assert call["attributes"]["notify.channel"] == deliver["attributes"]["notify.channel"]
    chain = [
        root,
        publish,
        *delivered,
        *[c for d in delivered for c in children(worker, d, "notify.provider")],
    ]
    assert {s["trace_id"] for s in chain} == {root["trace_id"]}
    assert ADDRESS not in json.dumps(producer + worker)


@pytest.mark.parametrize(
    ("priority", "pool"),
    [("normal", "threads"), ("high", "threads"), ("normal", "prefork")],  # high: the express lanes' too
)
def test_a_send_on_the_redis_fast_path_is_one_trace_to_the_provider_call(
    priority: str,
    pool: str,
    env: dict[str, str],
    redis_url: str,
    spans_file: Path,
    producer_spans: InMemorySpanExporter,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
) -> None:
    env["NOTIFY_BROKER_URL"] = redis_url
    start_worker("email", *INCLUDE, "-P", pool, "-c", "2", environ=env).wait_ready()
    producer = notifier()
    assert producer.publisher._redis is not None  # the fast path, Celery's publish bypassed

    result = producer.send("welcome", {"email": ADDRESS}, data={"name": "Ada"}, priority=priority)
    producer.flush(10)

    worker = worker_spans(spans_file, 1)
    spans = produced(producer_spans)
    send = one(spans, "notify.send", **{"notify.notification_id": result.id})
    assert (
        one(spans, "notify.publish")["attributes"]["messaging.destination.name"] == f"notify.email.{priority}"
    )
    assert send["attributes"]["notify.template"] == "welcome"
    assert_one_trace(spans, worker, send)
    deliver = one(worker, "notify.deliver")
    assert deliver["attributes"]["notify.delivery_id"] == result.deliveries[0].id
    assert one(worker, "notify.provider")["attributes"]["notify.provider"] == "smtp"


@pytest.mark.parametrize("celery", [False, True], ids=["notify-worker", "celery-worker"])
def test_a_send_through_celerys_publish_on_the_embedded_broker_is_one_trace(
    celery: bool,
    env: dict[str, str],
    spans_file: Path,
    producer_spans: InMemorySpanExporter,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
) -> None:
    start_worker("email", *INCLUDE, environ=env, celery=celery).wait_ready()
    producer = notifier()
    assert producer.publisher._redis is None  # Celery's send_task

    result = producer.send("welcome", {"email": ADDRESS}, data={"name": "Ada"})
    producer.flush(10)

    worker = worker_spans(spans_file, 1)
    spans = produced(producer_spans)
    assert_one_trace(spans, worker, one(spans, "notify.send", **{"notify.notification_id": result.id}))


def test_a_send_many_burst_is_one_trace_its_messages_each_parent_of_their_deliveries(
    env: dict[str, str],
    redis_url: str,
    spans_file: Path,
    producer_spans: InMemorySpanExporter,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
) -> None:
    env["NOTIFY_BROKER_URL"] = redis_url
    start_worker("sms", *INCLUDE, environ=env).wait_ready()
    producer = notifier()
    count = 128  # two deliveries a message (notify.broker.routing.group_size)
    intents = [Intent("welcome", {"phone": f"+1415555{i:04d}"}, data={"name": "Ada"}) for i in range(count)]

    producer.send_many(intents)
    producer.flush(10)

    worker = worker_spans(spans_file, count)
    spans = produced(producer_spans)
    send_many = one(spans, "notify.send_many")
    publishes = children(spans, send_many, "notify.publish")
    assert len(publishes) == count // 2
    assert {s["trace_id"] for s in spans + worker} == {send_many["trace_id"]}
    for publish in publishes:
        delivered = children(worker, publish, "notify.deliver")
        assert len(delivered) == 2, publish  # a burst's deliveries: children of its message's span
        assert all(len(children(worker, d, "notify.provider")) == 1 for d in delivered)


def test_a_dlq_replay_is_one_trace_from_the_replay_to_the_provider_call(
    env: dict[str, str],
    redis_url: str,
    spans_file: Path,
    producer_spans: InMemorySpanExporter,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
) -> None:
    env["NOTIFY_BROKER_URL"] = redis_url
    producer = notifier()
    delivery = NewDelivery(str(uuid.uuid4()), "email", ADDRESS, "normal", Status.QUEUED, None, 0.0)
    record_one(producer.store, str(uuid.uuid4()), "welcome", None, '{"name": "Ada"}', [delivery])
    claim = producer.store.claim(delivery.id, a_worker(producer.store))
    assert isinstance(claim, Claim) and producer.store.mark_failed(claim, "550 no such user", "550")
    start_worker("email", *INCLUDE, environ=env).wait_ready()

    assert producer.replay([delivery.id]).replayed == [delivery.id]

    worker = worker_spans(spans_file, 1)
    spans = produced(producer_spans)
    replay = one(spans, "notify.replay")
    assert replay["attributes"]["notify.deliveries"] == 1
    assert_one_trace(spans, worker, replay)


def test_a_scheduled_delivery_is_traced_from_the_maintenance_pass_that_releases_it(
    env: dict[str, str],
    redis_url: str,
    spans_file: Path,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
) -> None:
    """Published long after send() (a send_at, a retry's time, a sweep): its trace starts at the
    worker's maintenance pass, which says why it published."""
    env["NOTIFY_BROKER_URL"] = redis_url
    start_worker("email", *INCLUDE, environ=env).wait_ready()
    producer = notifier()
    later = producer.store.now() + timedelta(seconds=1)
    producer.send("welcome", {"email": ADDRESS}, data={"name": "Ada"}, send_at=later)

    worker = worker_spans(spans_file, 1, also="notify.maintenance")
    released = one(worker, "notify.maintenance", **{"notify.reason": "released"})
    assert released["parent_id"] is None and released["attributes"]["notify.deliveries"] == 1
    assert_one_trace(worker, worker, released)


def test_a_traceparent_celerys_instrumentation_puts_on_the_message_keeps_the_trace_whole(
    env: dict[str, str],
    spans_file: Path,
    producer_spans: InMemorySpanExporter,
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
) -> None:
    """As opentelemetry-instrumentation-celery does on Celery's path: a span of its own around the
    publish, injected over notify's into the message's headers."""
    tracer = trace.get_tracer("instrumentation")

    def instrument(headers: dict[str, Any], **_: object) -> None:
        with tracer.start_as_current_span("apply_async/notify.deliver", kind=trace.SpanKind.PRODUCER):
            propagate.inject(headers)

    before_task_publish.connect(instrument, weak=False)
    try:
        start_worker("email", *INCLUDE, environ=env).wait_ready()
        producer = notifier()
        producer.send("welcome", {"email": ADDRESS}, data={"name": "Ada"})
        producer.flush(10)
        worker = worker_spans(spans_file, 1)
    finally:
        before_task_publish.disconnect(instrument)
    spans = produced(producer_spans)
    [publish] = children(spans, one(spans, "notify.send"), "notify.publish")
    [instrumented] = children(spans, publish, "apply_async/notify.deliver")
    [deliver] = children(worker, instrumented, "notify.deliver")
    assert deliver["trace_id"] == publish["trace_id"]


@pytest.mark.parametrize(
    "carried",
    [
        {},
        {"traceparent": "00-not-a-trace-01", "tracestate": "=" * 10_000},
        {"traceparent": ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]},
        {"traceparent": 7},
        Context(traceparent="00-00000000000000000000000000000000-0000000000000000-01"),
    ],
)
def test_a_message_with_no_or_a_broken_trace_context_starts_a_trace_of_its_own(
    carried: object, producer_spans: InMemorySpanExporter
) -> None:
    with tracing.consumed(carried), tracing.delivering("d1", "email"):
        pass
    [deliver] = produced(producer_spans)
    assert deliver["name"] == "notify.deliver" and deliver["parent_id"] is None


def test_a_celery_request_carries_the_context_as_its_attributes(producer_spans: InMemorySpanExporter) -> None:
    with tracing.span("notify.send"):
        carried = dict(tracing.carrier() or ())
    with tracing.consumed(Context(carried)), tracing.delivering("d1", None):
        pass
    send, deliver = produced(producer_spans)
    assert (deliver["trace_id"], deliver["parent_id"]) == (send["trace_id"], send["span_id"])


def test_a_failed_provider_call_is_told_by_its_type_and_code_never_its_text(
    producer_spans: InMemorySpanExporter,
) -> None:
    refused = PermanentDeliveryError(f"550 {ADDRESS} unknown", channel="email", provider="smtp", code="550")
    with pytest.raises(PermanentDeliveryError), tracing.calling("smtp", "email"):
        raise refused
    [call] = producer_spans.get_finished_spans()
    assert call.status.status_code is StatusCode.ERROR
    assert call.status.description == "PermanentDeliveryError 550"
    assert ADDRESS not in repr(call.to_json()) and not call.events  # no exception event with its text


def test_without_a_tracer_provider_no_message_carries_a_trace_context(
    env: dict[str, str], redis_url: str, notifier: Callable[[], Notifier]
) -> None:
    assert not tracing.active()  # opentelemetry imports, but nothing configured it
    env["NOTIFY_BROKER_URL"] = redis_url
    producer = notifier()
    result = producer.send("welcome", {"email": ADDRESS}, data={"name": "Ada"})
    producer.send_many([Intent("welcome", {"email": ADDRESS}, data={"name": "Ada"}, dedup_key="b")])
    producer.flush(10)

    envelopes = queued_envelopes(redis_url)
    assert len(envelopes) == 2 and result.deliveries[0].id in json.dumps(envelopes)
    assert all("traceparent" not in e["headers"] for e in envelopes)


def test_without_opentelemetry_installed_sends_go_out_untraced(env: dict[str, str], redis_url: str) -> None:
    """`opentelemetry` not importable (the `otel` extra not installed): a send still publishes."""
    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from notify.api import Notifier\n"
        "from notify.observability import tracing\n"
        "from notify.settings import Settings\n"
        "import os\n"
        "assert not tracing.active() and tracing.carrier() is None\n"
        "n = Notifier(Settings.from_env(os.environ))\n"
        "n.send('welcome', {'email': 'ada@example.com'}, data={'name': 'Ada'})\n"
        "assert n.flush(10)\n"
        "n.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "NOTIFY_BROKER_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [envelope] = queued_envelopes(redis_url)
    assert "traceparent" not in envelope["headers"]


def queued_envelopes(redis_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = [k for k in client.keys("notify.*") if client.type(k) == "list"]
        return [json.loads(m) for k in keys for m in client.lrange(k, 0, -1)]
    finally:
        client.close()
