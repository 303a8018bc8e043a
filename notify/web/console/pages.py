"""The console's pages: what the store and the broker say, and the dead letters' buttons."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route

from notify import channels
from notify.api import Notifier
from notify.broker.depths import queue_depths
from notify.errors import NotifyError, StoreUnavailable, TemplateError
from notify.models import Status
from notify.settings import Settings, revealed
from notify.store import AttemptRecord, DeliveryRecord, Store
from notify.text import printable
from notify.web.console import previews
from notify.web.console.guard import CSRF_FIELD, Guard, csrf_token, csrf_valid

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("notify.web.console")

PATH = "/console"
LISTED = 100  # rows a page shows at most
MAX_FORM = 16 * 1024  # bytes: a console form is a token, an action and an id
MAX_QUERY = 1000  # characters of a search: longer is no id, address or status
SUMMARISED = 20  # ids a replay's summary names, per outcome
_SECTIONS = {  # the header link each page lights up
    "home.html": "Overview",
    "deliveries.html": "Deliveries",
    "delivery.html": "Deliveries",
    "dead_letters.html": "Dead letters",
    "templates.html": "Templates",
    "template.html": "Templates",
}


class Console:
    """The console's routes over `notify web`'s store and broker connection."""

    def __init__(self, settings: Settings, store: Store, producer: Callable[[], Celery]) -> None:
        self.settings = settings
        self.store = store
        self._producer = producer
        self._notifier: Notifier | None = None
        self._lock = threading.Lock()  # one replay or purge at a time: the notifier is not shared
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("notify.web.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["shown"] = _shown
        self.env.filters["when"] = _when
        self.env.filters["took"] = _took

    def mount(self) -> Mount:
        return Mount(
            PATH,
            routes=[
                Route("/", self.home, methods=["GET"]),
                Route("/deliveries", self.deliveries, methods=["GET"]),
                Route("/deliveries/{delivery_id}", self.delivery, methods=["GET"]),
                Route("/dead-letters", self.dead_letters, methods=["GET"]),
                Route("/dead-letters", self.act_on_dead_letters, methods=["POST"]),
                Route("/templates", self.templates, methods=["GET"]),
                Route("/templates/{name}", self.template, methods=["GET"]),
            ],
            middleware=[Middleware(Guard, settings=self.settings)],
        )

    def close(self) -> None:
        if self._notifier is not None:
            self._notifier.close()

    def page(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        text = self.env.get_template(template).render(
            csrf=csrf_token(self.settings),
            csrf_field=CSRF_FIELD,
            base=PATH,
            section=_SECTIONS.get(template, ""),
            **context,
        )
        return HTMLResponse(text, status_code=status_code)

    # -- the overview -----------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        depths, broker_error = await run_in_threadpool(self._depths)
        try:
            counts = await run_in_threadpool(self.store.status_counts)
            store_error = None
        except NotifyError as exc:  # unavailable, or its schema changed under us: said on the page
            counts, store_error = {}, str(exc)
        names = sorted({c for c, _ in counts}, key=_channel_rank)
        statuses = [s.value for s in Status if any(st == s.value for _, st in counts)]
        return self.page(
            "home.html",
            depths=depths,
            broker_error=broker_error,
            counts=counts,
            channels=names,
            statuses=statuses,
            store_error=store_error,
        )

    def _depths(self) -> tuple[dict[str, int], str | None]:
        try:
            return queue_depths(self._producer(), revealed(self.settings.broker_url)), None
        except Exception as exc:  # any transport's way of not answering: said on the page
            log.warning("the console could not count the queues: %s", type(exc).__name__)
            return {}, f"the broker does not answer ({type(exc).__name__})"

    # -- deliveries -------------------------------------------------------------------

    async def deliveries(self, request: Request) -> Response:
        q = request.query_params.get("q", "").strip()
        if len(q) > MAX_QUERY:
            raise HTTPException(400, f"a search is at most {MAX_QUERY} characters")
        found = await run_in_threadpool(self._search, q) if q else []
        return self.page("deliveries.html", q=q, rows=found[:LISTED], more=len(found) > LISTED)

    def _search(self, q: str) -> list[DeliveryRecord]:
        """By status word, else by delivery id, notification id or address (as each channel keeps it)."""
        if printable(q) != q:  # a control or bidi character: no id, address or status has one
            return []
        if q.lower() in {s.value for s in Status}:
            return self.store.records(status=q.lower(), limit=LISTED + 1)
        return self.store.records(key=q, addresses=_addresses(q, self.settings), limit=LISTED + 1)

    async def delivery(self, request: Request) -> Response:
        delivery_id = request.path_params["delivery_id"]
        found = await run_in_threadpool(self._record, delivery_id)
        if found is None:
            return self.page("missing.html", status_code=404, what=f"no delivery {delivery_id}")
        receipts = await run_in_threadpool(self.store.receipts_of, delivery_id)
        tries = await run_in_threadpool(self.store.attempts_of, delivery_id)
        timeline = _timeline(found, receipts, tries)
        return self.page("delivery.html", d=found, receipts=receipts, attempts=tries, timeline=timeline)

    def _record(self, delivery_id: str) -> DeliveryRecord | None:
        if printable(delivery_id) != delivery_id:  # no id has a control character (PostgreSQL takes no NUL)
            return None
        return self.store.record(delivery_id)

    # -- dead letters -----------------------------------------------------------------

    async def dead_letters(self, request: Request) -> Response:
        return await self._dead_letters_page()

    async def _dead_letters_page(
        self, done: Sequence[str] = (), problem: str | None = None, status_code: int = 200
    ) -> Response:
        letters = await run_in_threadpool(lambda: self.store.dead_letters(limit=LISTED + 1))
        return self.page(
            "dead_letters.html",
            status_code=status_code,
            letters=letters[:LISTED],
            more=len(letters) > LISTED,
            done=done,
            problem=problem,
        )

    async def act_on_dead_letters(self, request: Request) -> Response:
        """Replay one, replay all, or purge: only with a good CSRF token (else 403, nothing done)."""
        form = await _form(request)
        if not csrf_valid(self.settings, _one(form, CSRF_FIELD)):
            log.warning("a console form came without a good CSRF token; refused")
            return self.page("refused.html", status_code=403)
        action = _one(form, "action")
        try:
            if action == "replay":
                done = await run_in_threadpool(self._replay, [v for k, v in form if k == "id"] or None, False)
            elif action == "replay-all":
                done = await run_in_threadpool(self._replay, None, True)
            elif action == "purge" and _one(form, "confirm") == "yes":
                done = [f"purged {await run_in_threadpool(self.store.purge_dead_letters)} dead letters"]
            elif action == "purge":
                return await self._dead_letters_page(
                    problem="tick the box to confirm the purge", status_code=400
                )
            else:
                raise HTTPException(400, "unknown action")
        except NotifyError as exc:
            if isinstance(exc, StoreUnavailable):
                raise
            return await self._dead_letters_page(problem=str(exc), status_code=400)
        return await self._dead_letters_page(done=done)

    def _replay(self, ids: list[str] | None, everything: bool) -> list[str]:
        """What `notify dlq replay` does and says, as lines for the page."""
        if ids is None and not everything:
            return ["nothing chosen to replay"]
        with self._lock:
            if self._notifier is None:
                self._notifier = Notifier(self.settings)
            result = self._notifier.replay(ids)
        lines = _some(result.replayed, "replayed {}")
        lines += _some(
            result.suppressed,
            "left failed: {}'s address is suppressed (notify suppressions list; remove it to replay)",
        )
        lines += _some(result.not_found, "not a dead letter: {}")
        return lines or ["no dead letters to replay"]

    # -- templates --------------------------------------------------------------------

    async def templates(self, request: Request) -> Response:
        listed = await run_in_threadpool(previews.listing, self.settings)
        return self.page("templates.html", templates=listed, root=str(self.settings.templates_dir))

    async def template(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            data, sample_problem = await run_in_threadpool(previews.sample, self.settings, name)
        except TemplateError as exc:
            return self.page("missing.html", status_code=404, what=str(exc).removeprefix("template: "))
        try:
            shown = await run_in_threadpool(previews.previews, self.settings, name, data)
            error = None
        except TemplateError as exc:  # its template.toml: every channel is broken alike
            shown, error = [], str(exc).removeprefix("template: ")
        return self.page(
            "template.html", name=name, previews=shown, error=error, sample_problem=sample_problem, data=data
        )


def _addresses(q: str, settings: Settings) -> list[str]:
    """`q`, and `q` as each channel that takes it would keep it (a domain in IDNA form, ...)."""
    found = [q]
    for spec in channels.channels().values():
        try:
            found.append(spec.check_address(q, settings))
        except NotifyError:
            continue
    return list(dict.fromkeys(found))


def _some(ids: list[str], line: str) -> list[str]:
    """A line per id, the first SUMMARISED only: a replay of every dead letter may be thousands."""
    lines = [line.format(i) for i in ids[:SUMMARISED]]
    if len(ids) > SUMMARISED:
        lines.append(line.format(f"{len(ids) - SUMMARISED} more"))
    return lines


def _timeline(
    d: DeliveryRecord, receipts: list[dict[str, Any]], tries: list[AttemptRecord]
) -> list[tuple[datetime, str]]:
    """What happened to `d`, oldest first, from what the store keeps."""
    events: list[tuple[datetime | None, str]] = [
        (d.created_at, "recorded"),
        (d.handed_over_at, "handed to the provider"),
        (d.sent_at, "sent" + (f" (provider id {d.provider_id})" if d.provider_id else "")),
        (d.failed_at, "failed: " + " ".join(x for x in (d.error_code, d.last_error) if x)),
    ]
    events += [
        (
            r["received_at"],
            f"receipt from {r['provider']}: {r['status']}" + (f" {r['code']}" if r["code"] else ""),
        )
        for r in receipts
    ]
    events += [(a.started_at, f"try {a.number} claimed") for a in tries]
    events += [(a.ended_at, _try_ended(a)) for a in tries]
    if d.next_attempt_at is not None:
        why = " ".join(x for x in (d.error_code, d.last_error) if x)
        events.append((d.next_attempt_at, "next attempt due" + (f", after: {why}" if why else "")))
    events.append((d.updated_at, f"last change: now {d.status}"))
    return sorted(((t, what) for t, what in events if t is not None), key=lambda e: e[0])


def _try_ended(a: AttemptRecord) -> str:
    by = f" ({a.provider})" if a.provider else ""
    why = " ".join(x for x in (a.code, a.reason) if x)
    return f"try {a.number}{by}: {a.outcome}" + (f": {why}" if why else "")


def _took(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.3f} s"


async def _form(request: Request) -> list[tuple[str, str]]:
    """The request's urlencoded form, read within MAX_FORM; 4xx otherwise."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, "send application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise HTTPException(413, "request body too large")
    try:
        return parse_qsl(bytes(body).decode("utf-8"), keep_blank_values=True, max_num_fields=200)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "the body is not a form") from None


def _one(form: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in form if k == name]
    return values[0] if len(values) == 1 else None


def _shown(value: object) -> str:
    """Text from outside as a person should see it: control and bidi characters escaped, None blank."""
    return "" if value is None else printable(str(value))


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _channel_rank(name: str) -> tuple[int, str]:
    spec = channels.channels().get(name)
    return (spec.rank if spec else 1_000, name)
