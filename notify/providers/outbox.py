"""The development backend: what would be sent, written as files under `.notify/outbox/`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from notify.errors import PermanentDeliveryError
from notify.providers.base import EmailMessage, Message, Receipt, SmsMessage
from notify.providers.mime import build_mime
from notify.settings import Settings


class OutboxProvider:
    """Writes `<channel>/<delivery id>.json` (and `.eml` for email); a resend overwrites."""

    name = "outbox"

    def __init__(self, root: Path, sender: str) -> None:
        self.root = root
        self.sender = sender

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboxProvider:
        return cls(settings.home / "outbox", settings.email_from or "notify@localhost")

    def deliver(self, message: Message) -> Receipt:
        kind = _kind(message)
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{message.delivery_id}.json"
        mime = self._mime(message) if isinstance(message, EmailMessage) else None
        _write_atomically(path, json.dumps(dataclasses.asdict(message), indent=2).encode())
        if mime is not None:
            _write_atomically(path.with_suffix(".eml"), mime)
        return Receipt(provider_id=f"outbox:{kind}/{path.name}")

    def _mime(self, message: EmailMessage) -> bytes:
        try:
            return build_mime(message, self.sender)
        except ValueError as exc:  # an address or id no header can carry: it cannot be sent
            raise PermanentDeliveryError(str(exc), channel="email", provider="outbox") from None

    def close(self) -> None:
        pass


def _kind(message: Message) -> str:
    if isinstance(message, EmailMessage):
        return "email"
    return "sms" if isinstance(message, SmsMessage) else "push"


def _write_atomically(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)
