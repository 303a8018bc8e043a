"""Headers added to every answer of an ASGI app, as its response starts (no buffering)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.types import Message, Send


def headers_added(send: Send, headers: Mapping[str, str], *, replace: bool) -> Send:
    """`send`, adding `headers` to the response's start; `replace`: over those the app set."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = MutableHeaders(scope=message)
            for name, value in headers.items():
                if replace:
                    present[name] = value
                else:
                    present.setdefault(name, value)
        await send(message)

    return sending
