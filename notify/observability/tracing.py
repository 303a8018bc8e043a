"""Traces, once OpenTelemetry is configured: from send() through the broker to the provider call.

notify uses OpenTelemetry's API only, and only when a TracerProvider is set
(the SDK's, configured by the application or `opentelemetry-instrument`).
Without one, or without opentelemetry installed, every function here returns
at once: no span, no header, nothing carried.

The context travels as the globally configured propagator writes it (W3C
`traceparent` and `tracestate` by default): with a queued row from send() to
the relay's thread (`carrier()`, then `resumed()`), then as top-level headers of each broker
message, Celery's protocol 2, which Celery puts on `task.request`, where
opentelemetry-instrumentation-celery looks too. Spans:

    notify.send, notify.send_many, notify.replay    the caller's (internal)
    notify.maintenance                               a release or sweep publishing again (internal)
    notify.publish                                   one per broker message (producer)
    notify.deliver                                   one per delivery a message carries (consumer)
    notify.provider                                  the provider call (client)

Attributes name the template, channel, provider, queue and delivery id,
never an address, a body or an error's text (it may quote an address): a
failure is told by its type and code.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Mapping
from typing import Any

from notify.constants import VERSION

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate
    from opentelemetry import trace as otel_trace
    from opentelemetry.propagators.textmap import Getter

    class _MessageGetter(Getter[Any]):
        """Reads a field from a message's headers (a mapping) or from a Celery `task.request`
        (its top-level headers are attributes); a value that is not a string is not one."""

        def get(self, carrier: Any, key: str) -> list[str] | None:
            value = carrier.get(key) if isinstance(carrier, Mapping) else getattr(carrier, key, None)
            return [value] if isinstance(value, str) else None

        def keys(self, carrier: Any) -> list[str]:
            return []

    _GETTER = _MessageGetter()
    _IMPORTED = True
except ImportError:  # the `otel` extra is not installed
    _IMPORTED = False

Trace = tuple[tuple[str, str], ...]  # a propagator's fields, hashable: the relay groups by it

_NOTHING: contextlib.nullcontext[None] = contextlib.nullcontext()


RECHECK = 1.0  # seconds an "off" verdict holds: a provider set later is used from then on

_off_until = 0.0  # monotonic time until which active() says False without asking the API


def active() -> bool:
    """Whether spans are recorded: opentelemetry imports and a TracerProvider is configured (the
    API's default is a proxy that records nothing until one is).

    Asking the API costs microseconds (it looks at the environment each time while no provider
    is set), a few times per send: "off" is asked again only every RECHECK seconds.
    """
    global _off_until
    if not _IMPORTED or time.monotonic() < _off_until:
        return False
    provider = otel_trace.get_tracer_provider()
    if isinstance(provider, otel_trace.ProxyTracerProvider | otel_trace.NoOpTracerProvider):
        _off_until = time.monotonic() + RECHECK
        return False
    return True


def span(
    name: str, attributes: Mapping[str, str | int] | None = None
) -> contextlib.AbstractContextManager[Any]:
    """An internal span, current inside the block: `notify.send` and the like."""
    if not active():
        return _NOTHING
    return _span(name, otel_trace.SpanKind.INTERNAL, attributes or {})


def carrier() -> Trace | None:
    """The current context, to travel with queued rows to another thread; None if not tracing."""
    if not active():
        return None
    fields: dict[str, str] = {}
    propagate.inject(fields)
    return tuple(sorted(fields.items())) or None


def resumed(trace: Trace | None) -> contextlib.AbstractContextManager[None]:
    """The block runs in the context `carrier()` took in another thread (nothing if None)."""
    if trace is None or not active():
        return _NOTHING
    return _attached(propagate.extract(dict(trace)))


def publishing(queue: str, deliveries: int) -> contextlib.AbstractContextManager[Any]:
    """A span for one broker message, child of the current context; the block gets the headers
    that carry it (None if not tracing)."""
    if not active():
        return _NOTHING
    return _publishing(queue, deliveries)


def consumed(source: object) -> contextlib.AbstractContextManager[None]:
    """The block runs in the context a consumed message carries (`source`: its headers, or
    Celery's `task.request`).

    Unless a span is current already: an instrumentation such as
    opentelemetry-instrumentation-celery started one for this task, from the
    same headers, and notify's spans become its children.
    """
    if not active() or otel_trace.get_current_span().get_span_context().is_valid:
        return _NOTHING
    return _attached(propagate.extract(source, getter=_GETTER))


def delivering(delivery_id: str, channel: str | None) -> contextlib.AbstractContextManager[Any]:
    """The span of one delivery's attempt in a worker; `note` tells how it ended."""
    if not active():
        return _NOTHING
    attributes: dict[str, str | int] = {
        "notify.delivery_id": delivery_id,
        "messaging.operation.type": "process",
    }
    if channel is not None:
        attributes["notify.channel"] = channel
    return _span("notify.deliver", otel_trace.SpanKind.CONSUMER, attributes)


def calling(provider: str, channel: str) -> contextlib.AbstractContextManager[Any]:
    """The span of a provider call (SMTP, Twilio, FCM, a webhook): which one, never to whom."""
    if not active():
        return _NOTHING
    attributes: dict[str, str | int] = {"notify.provider": provider, "notify.channel": channel}
    return _span("notify.provider", otel_trace.SpanKind.CLIENT, attributes)


def note(span: Any, key: str, value: str | int) -> None:
    """Set an attribute on a span these functions gave (None when not tracing): an attempt's
    `notify.outcome`, a send's `notify.notification_id`."""
    if span is not None:
        span.set_attribute(key, value)


@functools.lru_cache(maxsize=4)
def _tracer(provider: Any) -> Any:
    return provider.get_tracer("notify", VERSION)


@contextlib.contextmanager
def _span(name: str, kind: Any, attributes: Mapping[str, str | int]) -> Iterator[Any]:
    tracer = _tracer(otel_trace.get_tracer_provider())
    with tracer.start_as_current_span(
        name,
        kind=kind,
        attributes=attributes,
        record_exception=False,  # its message may quote an address
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            _failed(current, exc)
            raise


def _failed(current: Any, exc: BaseException) -> None:
    """Mark a span failed by the exception's type and code alone."""
    code = getattr(exc, "code", None)
    described = type(exc).__name__ + (f" {code[:64]}" if isinstance(code, str) else "")
    current.set_attribute("error.type", type(exc).__name__)
    current.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, described))


@contextlib.contextmanager
def _publishing(queue: str, deliveries: int) -> Iterator[dict[str, str]]:
    attributes: dict[str, str | int] = {
        "messaging.destination.name": queue,
        "messaging.operation.type": "send",
        "notify.deliveries": deliveries,
    }
    with _span("notify.publish", otel_trace.SpanKind.PRODUCER, attributes):
        headers: dict[str, str] = {}
        propagate.inject(headers)
        yield headers


@contextlib.contextmanager
def _attached(context: Any) -> Iterator[None]:
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)
