"""The `notify web` application: routes, and the few rules every answer keeps."""

from __future__ import annotations

import email.parser
import email.policy
import functools
import html
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from notify import unsubscribe
from notify.errors import NotifyError, StoreUnavailable
from notify.models import SuppressionReason
from notify.receipts import Receipts
from notify.receipts import twilio as twilio_receipts
from notify.settings import Settings, load_status_hook, revealed
from notify.store import Store
from notify.web.console import Console
from notify.web.headers import headers_added

if TYPE_CHECKING:
    from celery import Celery
    from prometheus_client import CollectorRegistry

log = logging.getLogger("notify.web")

MAX_BODY = 64 * 1024  # bytes: a receipt or a one-click POST is a few hundred
BROKER_READ_TIMEOUT = 5.0  # seconds any one read of the broker (a probe, a scrape, a page) may take
ONE_CLICK = ("List-Unsubscribe", "One-Click")
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token is in the URL: it must not leave in a Referer
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
}


class Web:
    """The routes, and what they share: settings, the store (current schema required), receipts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.resolved_database_url, require_current=True)
        self.receipts = Receipts(self.store, settings, on_status=load_status_hook(settings))

    def close(self) -> None:
        self.store.close()
        if "_producer" in self.__dict__:
            self._producer.close()

    def healthy(self) -> dict[str, str]:
        """Each dependency's state: "ok", or why not (no host, no secret)."""
        found: dict[str, str] = {}
        try:
            self.store.schema_revision()
            found["store"] = "ok"
        except StoreUnavailable:
            found["store"] = "unavailable"
        except NotifyError as exc:
            found["store"] = type(exc).__name__
        found["broker"] = self._broker_state()
        return found

    @functools.cached_property
    def _producer(self) -> Celery:
        """The Celery app /healthz reaches the broker with: built on first ask, then kept."""
        from notify.broker.routing import producer_app  # Celery: imported when first asked

        app = producer_app(self.settings)
        if not self.settings.uses_embedded_broker:
            # Reads (a probe, a scrape, a page) must not hang on a broker that takes the connection
            # and never answers: every socket operation gives up after BROKER_READ_TIMEOUT.
            app.conf.broker_transport_options = {
                **app.conf.broker_transport_options,
                "socket_timeout": BROKER_READ_TIMEOUT,  # Redis
                "socket_connect_timeout": BROKER_READ_TIMEOUT,
                "read_timeout": BROKER_READ_TIMEOUT,  # py-amqp
                "write_timeout": BROKER_READ_TIMEOUT,
            }
        return app

    def _broker_state(self) -> str:
        try:
            with self._producer.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except Exception:
            return "unavailable"
        return "ok"

    async def metrics(self, request: Request) -> Response:
        """Prometheus' text format: the store's and the broker's gauges, read now."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = await run_in_threadpool(generate_latest, self._gauges)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @functools.cached_property
    def _gauges(self) -> CollectorRegistry:
        from notify.broker.depths import queue_depths
        from notify.web.gauges import web_registry

        broker_url = revealed(self.settings.broker_url)
        return web_registry(self.store, lambda: queue_depths(self._producer, broker_url))

    async def healthz(self, request: Request) -> Response:
        state = await run_in_threadpool(self.healthy)
        ok = all(v == "ok" for v in state.values())
        return JSONResponse(state, status_code=200 if ok else 503)

    async def twilio_status(self, request: Request) -> Response:
        form = await _form(request)
        url = _public_url(self.settings, request)
        signature = request.headers.get("X-Twilio-Signature")
        try:
            receipt = twilio_receipts.read(self.settings, url, signature, form)
        except twilio_receipts.Unverified:
            log.warning("a Twilio receipt did not verify; refused")
            return PlainTextResponse("forbidden", status_code=403)
        except twilio_receipts.BadReceipt as exc:
            return PlainTextResponse(f"bad request: {exc}", status_code=400)
        if receipt is not None:
            taken = await run_in_threadpool(self.receipts.take, receipt)
            log.info("receipt for delivery %s: %s", receipt.delivery_id, taken)
        return Response(status_code=204)

    async def unsubscribe_page(self, request: Request) -> Response:
        # The same page for every token, real or not: a GET changes nothing (mail scanners follow links).
        return HTMLResponse(_PAGE.replace("__ACTION__", html.escape(request.url.path, quote=True)))

    async def unsubscribe_post(self, request: Request) -> Response:
        form = await _form(request)
        if ONE_CLICK not in form:
            return PlainTextResponse(
                "bad request: the body must be List-Unsubscribe=One-Click", status_code=400
            )
        target = unsubscribe.read_token(self.settings, request.path_params["token"])
        if target is not None:
            await run_in_threadpool(
                self.store.suppress,
                target.channel,
                target.address,
                str(SuppressionReason.UNSUBSCRIBED),
                "one-click unsubscribe",
                category=target.category,
            )
            log.info("one-click unsubscribe from %s on %s", target.category, target.channel)
        # The same answer whether the token was good: the endpoint tells no one which tokens are real.
        return HTMLResponse(_DONE)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("the store is unavailable; try again", status_code=503)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    path = request.url.path
    if path.startswith(unsubscribe.PATH):  # never the token: it holds an address
        path = unsubscribe.PATH + "{token}"
    log.error("%s %s failed", request.method, path, exc_info=exc)
    return PlainTextResponse("internal error", status_code=500)


class _SecurityHeaders:
    """Adds _SECURITY_HEADERS to every HTTP answer (pure ASGI: no buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        await self.app(scope, receive, headers_added(send, _SECURITY_HEADERS, replace=False))


def create_app(settings: Settings) -> Starlette:
    """The app for `settings`; its store opens on first use (a database that is away starts it)."""
    web = Web(settings)
    console = Console(settings, web.store, lambda: web._producer)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        console.close()
        web.close()

    app = Starlette(
        routes=[
            Route("/healthz", web.healthz, methods=["GET"]),
            Route("/metrics", web.metrics, methods=["GET"]),
            Route(twilio_receipts.PATH, web.twilio_status, methods=["POST"]),
            Route(unsubscribe.PATH + "{token}", web.unsubscribe_page, methods=["GET"]),
            Route(unsubscribe.PATH + "{token}", web.unsubscribe_post, methods=["POST"]),
            console.mount(),
        ],
        middleware=[Middleware(_SecurityHeaders)],
        exception_handlers={
            StoreUnavailable: _store_unavailable,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    app.state.web = web
    return app


def _public_url(settings: Settings, request: Request) -> str:
    """The URL the provider called, as it signed it: NOTIFY_PUBLIC_URL's origin, this path and query."""
    base = (settings.public_url or str(request.base_url)).rstrip("/")
    query = request.url.query
    return base + request.url.path + (f"?{query}" if query else "")


async def _form(request: Request) -> list[tuple[str, str]]:
    """The request's form fields (urlencoded or multipart), read within MAX_BODY; 4xx otherwise."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise HTTPException(413, "request body too large")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "the body is not UTF-8") from None
    if kind in ("application/x-www-form-urlencoded", ""):
        try:
            return parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=200)
        except ValueError:
            raise HTTPException(400, "the body is not a form") from None
    if kind == "multipart/form-data":  # RFC 8058 allows it; a few mail clients send it
        return _multipart(request.headers["content-type"], text)
    raise HTTPException(415, "send application/x-www-form-urlencoded or multipart/form-data")


def _multipart(content_type: str, text: str) -> list[tuple[str, str]]:
    parsed = email.parser.Parser(policy=email.policy.HTTP).parsestr(
        f"Content-Type: {content_type}\r\n\r\n{text}"
    )
    if not parsed.is_multipart():
        raise HTTPException(400, "the body is not multipart")
    fields: list[tuple[str, str]] = []
    for part in parsed.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload()
        if isinstance(name, str) and isinstance(payload, str):
            fields.append((name, payload.strip()))
    return fields


_STYLE = "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}"
_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>Unsubscribe</title><style>{_STYLE}</style></head>
<body><h1>Unsubscribe</h1>
<p>Stop receiving messages of this kind at this address? Messages about your account and
what you asked for still come.</p>
<form method="post" action="__ACTION__">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form></body></html>
"""
_DONE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="robots" content="noindex"><title>Unsubscribed</title><style>{_STYLE}</style></head>
<body><h1>Unsubscribed</h1><p>You will receive no more messages of this kind at this address.</p>
</body></html>
"""
