"""OpenTelemetry for a test's worker: every finished span appended to $NOTIFY_TEST_SPANS_FILE.

A worker imports it with Celery's `--include` (`notify worker email --include
tests.support.otel_worker`), as README shows an application configuring its
own exporter: a TracerProvider set when the module is imported, before the
pool starts.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.support.spans import SPANS_FILE, JsonLinesExporter

provider = TracerProvider(resource=Resource.create({"service.name": "notify-worker"}))
provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ[SPANS_FILE])))
trace.set_tracer_provider(provider)
