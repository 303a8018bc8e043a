"""Finished spans as plain dicts, written as JSON lines by a worker and read back by its test."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

SPANS_FILE = "NOTIFY_TEST_SPANS_FILE"


def as_dict(span: ReadableSpan) -> dict[str, Any]:
    """What a test asserts on: names, ids in hex, parent, kind, attributes, times, status."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent is not None else None,
        "kind": span.kind.name,
        "attributes": dict(span.attributes or {}),
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "pid": os.getpid(),
    }


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to a file, one JSON object a line, from any thread or process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(as_dict(span)) + "\n" for span in spans)
        with self._lock, open(self.path, "a") as f:
            f.write(lines)  # one append: lines of several pool processes do not interleave
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def read(path: Path) -> list[dict[str, Any]]:
    """The spans written so far (none if the file is not there yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tree(spans: Sequence[dict[str, Any]]) -> str:
    """The spans of one trace, indented under their parents: name, span id, parent, duration."""
    children: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in spans}
    for span in sorted(spans, key=lambda s: s["start"]):
        parent = span["parent_id"] if span["parent_id"] in ids else None
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def show(parent: str | None, depth: int) -> None:
        for span in children.get(parent, []):
            took = (span["end"] - span["start"]) / 1e6
            lines.append(
                f"{'  ' * depth}{span['name']} [{span['kind'].lower()}] span {span['span_id']} "
                f"parent {span['parent_id'] or '-'} {took:.2f} ms (pid {span['pid']})"
            )
            show(span["span_id"], depth + 1)

    show(None, 0)
    return "\n".join(lines)
