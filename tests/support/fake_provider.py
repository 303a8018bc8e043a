"""The system model's provider (tests/test_system_model.py), loaded as NOTIFY_PUSH_BACKEND.

It hands every message to the model that is running, which counts the handover
and decides the answer: at once, late, never, a failure, hostile text.
"""

from __future__ import annotations

from typing import Protocol

from notify.providers.base import Message, Receipt
from notify.settings import Settings

PATH = "tests.support.fake_provider:FakeProvider"


class Edge(Protocol):
    def deliver(self, message: Message) -> Receipt: ...


RUNNING: list[Edge] = []  # the model running now (the last one)


class FakeProvider:
    name = "fake"

    @classmethod
    def from_settings(cls, settings: Settings) -> FakeProvider:
        return cls()

    def deliver(self, message: Message) -> Receipt:
        return RUNNING[-1].deliver(message)

    def close(self) -> None:
        pass
