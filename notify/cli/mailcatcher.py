"""A local SMTP server that writes each message it receives to a file (for the demo)."""

from __future__ import annotations

import itertools
import socket
import threading
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _Handler:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        # numbered on from the mail an earlier run left: a second demo never overwrites the first's
        taken = [int(p.stem) for p in folder.glob("*.eml") if p.stem.isdigit()]
        self._numbers = itertools.count(max(taken, default=0) + 1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        with self._lock:
            self.messages.append(message_from_bytes(content))
            while True:
                try:  # "x": never over a file another catcher on this folder wrote meanwhile
                    with (self.folder / f"{next(self._numbers):05d}.eml").open("xb") as f:
                        f.write(content)
                    break
                except FileExistsError:
                    continue
        return "250 OK"


class MailCatcher:
    """`with MailCatcher(folder) as catcher:` listens on 127.0.0.1:`catcher.port`."""

    def __init__(self, folder: Path, port: int = 0) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.handler = _Handler(folder)
        self.port = port or free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[Message]:
        return list(self.handler.messages)

    def __enter__(self) -> MailCatcher:
        self.controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.controller.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
