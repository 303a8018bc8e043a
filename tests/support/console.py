"""The operator console to test: `notify web` with a password, over a store a real worker filled."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from notify.api import Notifier
from notify.models import SendResult, Status
from notify.store import Claim, NewDelivery, NewReceipt, Store
from tests.support.processes import Worker, wait_for
from tests.support.records import a_worker, record_one
from tests.support.smtp import SmtpServer
from tests.support.web import Web, web_env

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "console-password-4f2a"
AUTH = ("admin", PASSWORD)
SENT_TO = "grace@example.com"
REFUSED = "bo@example.com"  # the SMTP server refuses it by policy: a dead letter a replay can send
# Text from outside the console shows: a provider's reply, an address the store was given (the
# store escapes a NUL in a reason; PostgreSQL takes none in an address).
HOSTILE_ADDRESS = "<script>alert('address')</script>\u202egnp.exe\x1b[2J" + "a" * 400 + "@example.com"
HOSTILE_REASON = "<script>alert('reason')</script>\u202eevil\x00" + "r" * 5000
HOSTILE_REPLY = "<img src=x onerror=alert('reply')>\u202e"


@dataclass
class Site:
    """What the console shows: a sent email, a dead letter, and two deliveries of hostile text."""

    web: Web
    producer: Notifier
    smtp: SmtpServer
    sent: SendResult
    dead: str
    hostile_failed: str
    hostile_sent: str

    @property
    def console(self) -> str:
        return self.web.url + "/console"

    def status(self, delivery_id: str) -> Status:
        found = self.producer.store.get(delivery_id)
        assert found is not None, delivery_id
        return found.status

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(self.console + path, auth=AUTH, timeout=30, **kwargs)  # type: ignore[arg-type]


def templates_with_a_broken_one(tmp_path: Path) -> Path:
    """The repo's templates, and `broken`, whose email subject does not parse."""
    root = tmp_path / "templates"
    shutil.copytree(REPO / "templates", root)
    (root / "broken").mkdir()
    (root / "broken" / "email.subject.j2").write_text("Hello {{ name ")
    (root / "broken" / "email.txt.j2").write_text("Hi {{ name }}")
    (root / "broken" / "sms.txt.j2").write_text("{{ missing.attribute }}")
    return root


def open_site(
    env: dict[str, str],
    tmp_path: Path,
    smtp: SmtpServer,
    start_worker: Callable[..., Worker],
    notifier: Callable[[], Notifier],
) -> Site:
    """A real email worker sends one email and fails one for good; the store gets hostile text."""
    env["NOTIFY_TEMPLATES_DIR"] = str(templates_with_a_broken_one(tmp_path))
    env["NOTIFY_WEB_PASSWORD"] = PASSWORD
    port = web_env(env)
    smtp.reject(REFUSED, "554 5.7.1 Message refused by policy")
    start_worker("email").wait_ready()
    producer = notifier()
    sent = producer.send("welcome", {"email": SENT_TO}, data={"name": "Grace"}, channels=["email"])
    dead = producer.send("welcome", {"email": REFUSED}, data={"name": "Bo"}, channels=["email"])
    site = Site(
        web=Web(env, tmp_path / "web.log", port),
        producer=producer,
        smtp=smtp,
        sent=sent,
        dead=dead.deliveries[0].id,
        hostile_failed=_hostile_dead_letter(producer.store),
        hostile_sent=_hostile_receipt(producer.store),
    )
    wait_for(lambda: site.status(sent.deliveries[0].id) is Status.SENT, what="the email to be sent")
    wait_for(lambda: site.status(site.dead) is Status.FAILED, what="the refused email to fail")
    site.web.wait_ready()
    return site


def _hostile(store: Store) -> tuple[str, Claim]:
    delivery = NewDelivery(str(uuid.uuid4()), "email", HOSTILE_ADDRESS, "normal", Status.QUEUED)
    record_one(store, str(uuid.uuid4()), "welcome", None, '{"name": "x"}', [delivery])
    claim = store.claim(delivery.id, a_worker(store))
    assert isinstance(claim, Claim), claim
    return delivery.id, claim


def _hostile_dead_letter(store: Store) -> str:
    delivery_id, claim = _hostile(store)
    assert store.mark_failed(claim, HOSTILE_REASON, "<b>5.7.1</b>")
    return delivery_id


def _hostile_receipt(store: Store) -> str:
    delivery_id, claim = _hostile(store)
    assert store.mark_sent(claim, HOSTILE_REPLY)
    receipt = NewReceipt(
        delivery_id, "twilio", HOSTILE_REPLY, Status.UNDELIVERED, "<i>30003</i>", HOSTILE_REASON
    )
    assert store.add_receipt(receipt)
    return delivery_id
