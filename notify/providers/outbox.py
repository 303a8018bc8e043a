"""The development backend: what would be sent, written as files under `.notify/outbox/`."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

from notify import channels as registry
from notify.providers.base import Message, Receipt
from notify.settings import Settings, import_named


class OutboxProvider:
    """Writes `<channel>/<delivery id>.json`, and the files the channel adds (an email's `.eml`);
    a resend overwrites."""

    name = "outbox"

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboxProvider:
        return cls(settings.home / "outbox", settings)

    def deliver(self, message: Message) -> Receipt:
        folder = self.root / message.channel
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{message.delivery_id}.json"
        files = self._extra_files(message)  # before any write: it may refuse
        _write_atomically(path, json.dumps(dataclasses.asdict(message), indent=2).encode())
        for suffix, content in files.items():
            _write_atomically(path.with_suffix(suffix), content)
        return Receipt(provider_id=f"outbox:{message.channel}/{path.name}")

    def close(self) -> None:
        pass

    def _extra_files(self, message: Message) -> Mapping[str, bytes]:
        """The files the channel adds beside the JSON (its `outbox_files`, a function or its path)."""
        extra = registry.channel(message.channel).outbox_files
        if isinstance(extra, str):
            extra = import_named(extra, setting=f"the {message.channel} channel's outbox_files")
        return extra(message, self.settings) if extra else {}


def _write_atomically(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)
