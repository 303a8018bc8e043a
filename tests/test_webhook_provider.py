"""The webhook channel's checks, and its provider over real HTTP against a local receiver."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import hmac
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from notify.channels.webhook import (
    MAX_BODY_BYTES,
    WebhookMessage,
    WebhookSettings,
    build_message,
    check_body,
    check_url,
)
from notify.errors import (
    ConfigurationError,
    DeliveryError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    TemplateError,
    TransientDeliveryError,
    ValidationError,
)
from notify.providers import webhook as webhook_module
from notify.providers.webhook import WebhookProvider, WebhookProviderSettings
from notify.providers.webhook_signing import sign
from notify.settings import Secret, Settings
from tests.fakes.webhook import FakeWebhook
from tests.support.trickle import TricklingReceiver

SECRET = "whsec-test-1234567890"
BODY = '{"event": "welcome", "name": "Ada"}'
PRIVATE_OK = Settings().with_environ(NOTIFY_WEBHOOK_ALLOW_PRIVATE="1")
HINT = "NOTIFY_WEBHOOK_ALLOW_PRIVATE=1 allows it"


@pytest.fixture
def fake() -> Iterator[FakeWebhook]:
    with FakeWebhook(SECRET) as receiver:
        yield receiver


def make_provider(**options: object) -> WebhookProvider:
    given: dict[str, object] = {"allow_private": True, "delivery_timeout": 2.0, **options}
    return WebhookProvider(Secret(SECRET), **given)  # type: ignore[arg-type]


@pytest.fixture
def provider() -> Iterator[WebhookProvider]:
    webhook = make_provider()
    yield webhook
    webhook.close()


def message(url: str, body: str = BODY) -> WebhookMessage:
    return WebhookMessage(delivery_id="dlv-1", url=url, body=body)


def pinned(address: str = "127.0.0.1") -> object:
    def resolver(host: str, port: int) -> list[str]:
        assert host == "hooks.example.test"
        return [address]

    return resolver


@contextlib.contextmanager
def raw_server(script: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that hands its first connection to `script`: yields the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError):  # the client gave up, or nobody came
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(5)
                script(connection)

    thread = threading.Thread(target=serve, name="raw-server", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(10)


def read_request(connection: socket.socket) -> bytes:
    """One HTTP request, head and body, as received."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536) or b"\r\n\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += connection.recv(65536) or b"x" * length
    return data


# check_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://hooks.example.com/notify?x=1", "https://hooks.example.com/notify?x=1"),
        ("HTTPS://Hooks.Example.COM", "https://hooks.example.com/"),
        ("https://hooks.example.com:8443/a#fragment", "https://hooks.example.com:8443/a"),
        ("https://hooks.example.com./", "https://hooks.example.com./"),
        ("http://8.8.8.8/x", "http://8.8.8.8/x"),
        ("http://0x08.8.8.8/", "http://8.8.8.8/"),
        ("https://[2606:4700:4700::1111]/", "https://[2606:4700:4700::1111]/"),
        ("https://[::ffff:8.8.8.8]/", "https://[::ffff:808:808]/"),
        ("https://bücher.example/", "https://xn--bcher-kva.example/"),
        ("https://straße.de/", "https://xn--strae-oqa.de/"),  # IDNA 2008, not 2003's strasse.de
        ("https://faß.de/", "https://xn--fa-hia.de/"),
        ("https://[::ffff:0:8.8.8.8]/", "https://[::ffff:0:808:808]/"),
        # Path and query percent-encoded as browsers do (WHATWG URL), existing escapes kept as they are.
        ("https://hooks.example.com/webhooks/café", "https://hooks.example.com/webhooks/caf%C3%A9"),
        ("https://hooks.example.com/in?name=Jürgen", "https://hooks.example.com/in?name=J%C3%BCrgen"),
        (
            "https://hooks.example.com/caf%C3%A9?n=J%c3%bcrgen",
            "https://hooks.example.com/caf%C3%A9?n=J%c3%bcrgen",
        ),
        ("https://hooks.example.com/%zz%?q=%", "https://hooks.example.com/%zz%?q=%"),
        ("https://hooks.example.com/😀", "https://hooks.example.com/%F0%9F%98%80"),
        ('https://hooks.example.com/a"<>^`{}|', "https://hooks.example.com/a%22%3C%3E%5E%60%7B%7D|"),
        ("https://hooks.example.com/a?b='\"<>?^`{}/", "https://hooks.example.com/a?b=%27%22%3C%3E?^`{}/"),
    ],
)
def test_check_url_accepts_public_http_urls_in_the_form_they_are_posted(url: str, expected: str) -> None:
    assert check_url(url, Settings()) == expected
    assert check_url(expected, Settings()) == expected  # the worker checks the stored form again


def _not_public(host: str, kind: str) -> str:
    return f"to.webhook: host {host} is a {kind} address, not a public one; {HINT}"


def _grown(length: int) -> str:
    return f"to.webhook: is {length} characters once normalised, over the limit of 512"


REFUSED = [
    ("ftp://hooks.example.com/x", "to.webhook: must be an http:// or https:// URL"),
    ("hooks.example.com/x", "to.webhook: must be an http:// or https:// URL"),
    ("http:///path", "to.webhook: must name a host"),
    (
        "https://user:pass@hooks.example.com/",
        "to.webhook: must not carry a user name or password (user:pass@)",
    ),
    ("https://hooks.example.com:99999/", "to.webhook: has an invalid port (1 to 65535)"),
    ("https://hooks.example.com:0/", "to.webhook: has an invalid port (1 to 65535)"),
    ("https://hooks.example.com:https/", "to.webhook: has an invalid port (1 to 65535)"),
    ("https://[::1/", "to.webhook: is not a valid URL"),
    ("https://bad_host!.example/", "to.webhook: has an invalid host name 'bad_host!.example'"),
    ("https://a..example/", "to.webhook: has an invalid host name 'a..example'"),
    ("http://1.2.3.256/", "to.webhook: has an invalid IPv4 address '1.2.3.256'"),
    ("https://-bücher.example/", "to.webhook: has an invalid host name '-bücher.example'"),
    ("http://[v1.x]/", "to.webhook: has an invalid IPv6 address [v1.x]"),  # IPvFuture
    ("http://[fe80::1%25eth0]/", "to.webhook: must not carry an IPv6 zone (%...)"),
    ("http://127.0.0.1/", _not_public("127.0.0.1", "loopback")),
    ("http://10.1.2.3:8080/", _not_public("10.1.2.3", "private")),
    ("http://192.168.1.1/", _not_public("192.168.1.1", "private")),
    ("http://169.254.169.254/latest/meta-data/", _not_public("169.254.169.254", "link-local")),
    ("http://0.0.0.0/", _not_public("0.0.0.0", "unspecified")),
    ("http://224.0.0.1/", _not_public("224.0.0.1", "multicast")),
    ("http://100.64.0.1/", _not_public("100.64.0.1", "shared (carrier-grade NAT)")),
    ("http://[::1]/", _not_public("[::1]", "loopback")),
    ("http://[::ffff:127.0.0.1]/", _not_public("[::ffff:7f00:1]", "loopback")),
    ("http://[64:ff9b::10.0.0.1]/", _not_public("[64:ff9b::a00:1]", "private")),
    ("http://[::ffff:0:10.0.0.1]/", _not_public("[::ffff:0:a00:1]", "private")),  # IPv4-translated
    ("http://[::8.8.8.8]/", _not_public("[::808:808]", "deprecated IPv4-compatible")),
    ("http://[fe80::1]/", _not_public("[fe80::1]", "link-local")),
    ("http://[fd00::1]/", _not_public("[fd00::1]", "private")),
    ("http://127.1/", _not_public("127.0.0.1", "loopback")),
    ("http://0x7f.1/", _not_public("127.0.0.1", "loopback")),
    ("http://0x7f000001/", _not_public("127.0.0.1", "loopback")),
    ("http://2130706433/", _not_public("127.0.0.1", "loopback")),
    ("http://0177.0.0.1/", _not_public("127.0.0.1", "loopback")),
    ("http://127.0.0.1./", _not_public("127.0.0.1", "loopback")),
    ("http://localhost:8080/", f"to.webhook: host localhost is this machine; {HINT}"),
    ("http://foo.localhost./", f"to.webhook: host foo.localhost. is this machine; {HINT}"),
    ("https://hooks.example.com/" + "a" * 600, "to.webhook: is 626 characters, over the limit of 512"),
    # Each under the limit as given, over it once normalised: the store keeps the normalised form.
    ("http://1.1/" + "a" * 501, _grown(516)),
    ("https://bücher.example/" + "a" * 489, _grown(519)),
    ("https://hooks.example.com?" + "q" * 486, _grown(513)),
    ("https://hooks.example.com/é" + "a" * 485, _grown(517)),
    (42, "to.webhook: must be a string, not int"),
    (None, "to.webhook: must be a string, not NoneType"),
    ("", "to.webhook: must not be empty"),
    (
        "https://hooks.example.com/\nX-Injected: 1",
        "to.webhook: must not contain control characters, line breaks or lone surrogates",
    ),
    ("https://hooks.example.com/a b", "to.webhook: must not contain spaces"),
]


@pytest.mark.parametrize(("url", "expected"), REFUSED)
def test_check_url_refuses_what_a_worker_must_not_call(url: object, expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_url(url, Settings())

    assert str(caught.value) == expected
    assert caught.value.field == "to.webhook"


def test_check_url_never_echoes_a_password_in_the_url() -> None:
    with pytest.raises(ValidationError) as caught:
        check_url("https://user:hunter2@hooks.example.com/", Settings())

    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8080/hook", "http://127.0.0.1:8080/hook"),
        ("http://127.1/", "http://127.0.0.1/"),
        ("http://2130706433/", "http://127.0.0.1/"),
        ("http://[::1]/", "http://[::1]/"),
        ("http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/"),
        ("http://localhost:8080/", "http://localhost:8080/"),
        ("http://foo.localhost./", "http://foo.localhost./"),
        ("http://10.1.2.3/", "http://10.1.2.3/"),
        ("http://169.254.169.254/", "http://169.254.169.254/"),
        ("http://100.64.0.1/", "http://100.64.0.1/"),
        ("http://[fe80::1]/", "http://[fe80::1]/"),
    ],
)
def test_check_url_accepts_private_targets_when_allowed(url: str, expected: str) -> None:
    assert check_url(url, PRIVATE_OK) == expected


def test_check_url_still_refuses_a_bad_url_when_private_targets_are_allowed() -> None:
    with pytest.raises(ValidationError, match="must be an http:// or https:// URL"):
        check_url("file:///etc/passwd", PRIVATE_OK)


# check_body and build_message


@pytest.mark.parametrize("body", ['{"a": 1}', "[1, 2.5, null]", '"text"', '{"name": "Zoë 🎉"}'])
def test_check_body_accepts_strict_json(body: str) -> None:
    assert check_body({"body": body}) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "{",
            "is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        ("NaN", "is not valid JSON: NaN is not allowed"),
        ('{"x": -Infinity}', "is not valid JSON: -Infinity is not allowed"),
        ("", "is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ("\ud800", "is not valid JSON: it holds a lone surrogate"),
    ],
)
def test_check_body_names_what_is_wrong(body: str, expected: str) -> None:
    assert check_body({"body": body}) == expected


def test_check_body_refuses_a_body_over_the_size_limit() -> None:
    body = json.dumps({"blob": "x" * MAX_BODY_BYTES})

    assert check_body({"body": body}) == f"is {len(body)} bytes, over the limit of {MAX_BODY_BYTES}"


def test_check_body_says_when_the_body_part_is_missing() -> None:
    assert check_body({}) == "is missing"


def test_build_message_checks_the_url_and_the_body() -> None:
    built = build_message("dlv-9", "HTTPS://Hooks.Example.com/in", {"body": BODY}, Settings())

    assert built == WebhookMessage(delivery_id="dlv-9", url="https://hooks.example.com/in", body=BODY)
    assert built.channel == "webhook"
    with pytest.raises(TemplateError, match=r"webhook\.json\.j2 is not valid JSON"):
        build_message("dlv-9", "https://hooks.example.com/in", {"body": "{"}, Settings())
    with pytest.raises(ValidationError, match="loopback"):
        build_message("dlv-9", "http://127.0.0.1/in", {"body": BODY}, Settings())


# settings


def test_from_settings_refuses_to_start_without_the_secret() -> None:
    with pytest.raises(ConfigurationError) as caught:
        WebhookProvider.from_settings(Settings())

    assert str(caught.value) == "NOTIFY_WEBHOOK_SECRET is required but not set"
    assert caught.value.setting == "NOTIFY_WEBHOOK_SECRET"


def test_settings_and_provider_never_show_the_secret() -> None:
    settings = Settings(delivery_timeout=7.0).with_environ(
        NOTIFY_WEBHOOK_ALLOW_PRIVATE="true", NOTIFY_WEBHOOK_SECRET=SECRET
    )

    own = settings.provider_settings(WebhookProviderSettings)
    channel = settings.provider_settings(WebhookSettings)
    webhook = WebhookProvider.from_settings(settings)

    assert own.secret == Secret(SECRET)
    assert channel.allow_private is True
    assert webhook.allow_private is True
    assert webhook.delivery_timeout == 7.0
    for shown in (repr(own), str(own), repr(channel), repr(webhook), repr(settings)):
        assert SECRET not in shown


# delivery over HTTP


def test_a_delivery_is_signed_and_carries_its_headers(fake: FakeWebhook, provider: WebhookProvider) -> None:
    before = int(time.time())

    receipt = provider.deliver(message(fake.url))

    [received] = fake.requests
    assert receipt.provider_id is None
    assert received.signature_ok
    assert received.body == BODY.encode()
    assert received.path == "/hook"
    assert received.headers["content-type"] == "application/json"
    assert received.headers["webhook-id"] == received.headers["x-notify-delivery-id"] == "dlv-1"
    assert before <= int(received.headers["webhook-timestamp"]) <= int(time.time())
    assert received.headers["webhook-signature"].startswith("v1,")
    assert "x-notify-signature" not in received.headers  # one scheme: the Standard Webhooks one


def test_a_signature_without_the_delivery_id_or_for_another_id_does_not_verify(fake: FakeWebhook) -> None:
    body, timestamp = BODY.encode(), int(time.time())
    key = SECRET.encode()
    without_id = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).digest()
    signatures = {
        "dlv-1": sign([key], "dlv-1", timestamp, body),
        "dlv-2": sign([key], "dlv-1", timestamp, body),  # a replay under a fresh id
        "dlv-3": f"v1,{base64.b64encode(without_id).decode()}",
    }

    for delivery_id, signature in signatures.items():
        headers = {"webhook-id": delivery_id, "webhook-timestamp": str(timestamp)}
        urllib3.request("POST", fake.url, body=body, headers={**headers, "webhook-signature": signature})

    assert [r.signature_ok for r in fake.requests] == [True, False, False]


def test_the_receiver_can_tell_a_wrong_secret(fake: FakeWebhook) -> None:
    webhook = WebhookProvider(Secret("not-the-secret"), allow_private=True, delivery_timeout=2.0)
    try:
        webhook.deliver(message(fake.url))
    finally:
        webhook.close()

    assert [r.signature_ok for r in fake.requests] == [False]


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_a_2xx_answer_is_sent(fake: FakeWebhook, provider: WebhookProvider, status: int) -> None:
    fake.answer_next(status)
    fake.answer_next(status)

    provider.deliver(message(fake.url))
    provider.deliver(message(fake.url))  # the connection is still usable after the answer

    assert len(fake.requests) == 2
    assert fake.connection_count == 1


def test_a_connection_idle_too_long_is_not_reused(
    fake: FakeWebhook, provider: WebhookProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver may be closing it (its keep-alive timeout): a POST on it would get no answer."""
    monkeypatch.setattr(webhook_module, "MAX_IDLE_SECONDS", 0.0)
    fake.answer_next(204)
    fake.answer_next(204)

    provider.deliver(message(fake.url))
    provider.deliver(message(fake.url))

    assert len(fake.requests) == 2
    assert fake.connection_count == 2


def test_429_is_transient_with_the_retry_after_hint(fake: FakeWebhook, provider: WebhookProvider) -> None:
    fake.answer_next(429, headers={"Retry-After": "2"})

    with pytest.raises(TransientDeliveryError) as caught:
        provider.deliver(message(fake.url))

    assert caught.value.retry_after == 2.0
    assert caught.value.code == "http_429"
    assert caught.value.channel == "webhook"


@pytest.mark.parametrize("status", [500, 503, 408])
def test_server_errors_and_408_are_transient(
    fake: FakeWebhook, provider: WebhookProvider, status: int
) -> None:
    fake.answer_next(status)

    with pytest.raises(TransientDeliveryError) as caught:
        provider.deliver(message(fake.url))

    assert caught.value.code == f"http_{status}"
    assert caught.value.retry_after is None


@pytest.mark.parametrize("status", [502, 504])
def test_a_gateway_that_gave_up_leaves_the_outcome_unknown(
    fake: FakeWebhook, provider: WebhookProvider, status: int
) -> None:
    fake.answer_next(status)

    with pytest.raises(OutcomeUnknownError):
        provider.deliver(message(fake.url))


@pytest.mark.parametrize("status", [410, 400, 401, 404])
def test_other_4xx_are_permanent(fake: FakeWebhook, provider: WebhookProvider, status: int) -> None:
    fake.answer_next(status)

    with pytest.raises(PermanentDeliveryError) as caught:
        provider.deliver(message(fake.url))

    assert not isinstance(caught.value, OutcomeUnknownError)
    assert caught.value.code == f"http_{status}"


def test_a_redirect_is_permanent_and_not_followed(fake: FakeWebhook, provider: WebhookProvider) -> None:
    fake.answer_next(301, headers={"Location": fake.url + "/moved"})

    with pytest.raises(PermanentDeliveryError) as caught:
        provider.deliver(message(fake.url))

    assert caught.value.code == "http_301"
    assert "redirects are not followed" in caught.value.reason
    assert [r.path for r in fake.requests] == ["/hook"]


def test_a_scripted_sequence_is_classified_answer_by_answer(
    fake: FakeWebhook, provider: WebhookProvider
) -> None:
    for status in (429, 500, 410, 200):
        fake.answer_next(status, headers={"Retry-After": "2"} if status == 429 else None)
    outcomes: list[str] = []

    for _ in range(4):
        try:
            provider.deliver(message(fake.url))
            outcomes.append("sent")
        except PermanentDeliveryError:
            outcomes.append("permanent")
        except TransientDeliveryError:
            outcomes.append("transient")

    assert outcomes == ["transient", "transient", "permanent", "sent"]


def test_a_slow_answer_past_the_budget_leaves_the_outcome_unknown(fake: FakeWebhook) -> None:
    fake.answer_next(200, stall=True)
    webhook = make_provider(delivery_timeout=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(OutcomeUnknownError, match="may have been accepted"):
            webhook.deliver(message(fake.url))
    finally:
        webhook.close()
        fake.release()

    assert time.monotonic() - started < 3.0
    assert len(fake.requests) == 1


def test_a_connection_cut_after_sending_leaves_the_outcome_unknown(
    fake: FakeWebhook, provider: WebhookProvider
) -> None:
    fake.answer_next(200, drop=True)

    with pytest.raises(OutcomeUnknownError):
        provider.deliver(message(fake.url))

    assert len(fake.requests) == 1


def test_an_interim_1xx_answer_leaves_the_outcome_unknown(provider: WebhookProvider) -> None:
    # http.client returns a 102 as the answer; the 204 after it is never read.
    def interim_then_final(connection: socket.socket) -> None:
        read_request(connection)
        connection.sendall(b"HTTP/1.1 102 Processing\r\n\r\n")
        time.sleep(0.05)
        connection.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        connection.recv(1)  # until the client closes

    with raw_server(interim_then_final) as port, pytest.raises(OutcomeUnknownError) as caught:
        provider.deliver(message(f"http://127.0.0.1:{port}/hook"))

    assert "interim 102 Processing" in caught.value.reason
    assert caught.value.code == "outcome_unknown"


def test_a_body_trickled_after_a_2xx_does_not_hold_the_worker_past_the_budget() -> None:
    def trickle(connection: socket.socket) -> None:
        read_request(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n")
        for _ in range(40):  # 4 s in all
            time.sleep(0.1)
            connection.sendall(b"x")

    webhook = make_provider(delivery_timeout=1.0)
    with raw_server(trickle) as port:
        started = time.monotonic()
        receipt = webhook.deliver(message(f"http://127.0.0.1:{port}/hook"))
        took = time.monotonic() - started
        webhook.close()

    assert receipt.provider_id is None
    assert took < 1.8


@contextlib.contextmanager
def blackhole(port: int) -> Iterator[None]:
    """A listener on 127.0.0.2:`port` with a full accept queue: a connect hangs, its SYNs dropped."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        try:
            listener.bind(("127.0.0.2", port))
        except OSError as exc:
            pytest.skip(f"cannot listen on 127.0.0.2:{port} ({exc})")
        listener.listen(0)
        for _ in range(4):  # fill the accept queue, never accepted
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.2", port))
        for _ in range(10):  # until a probe hangs: the fillers' handshakes have filled the queue
            try:
                socket.create_connection(("127.0.0.2", port), timeout=0.3).close()
            except TimeoutError:
                yield
                return
        pytest.skip("this kernel accepts a connection past a full backlog: no blackhole on loopback")


def test_a_blackholed_first_address_leaves_time_for_the_next(
    fake: FakeWebhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook_module, "CONNECT_TIMEOUT_PER_ADDRESS", 0.3)
    webhook = make_provider(resolver=lambda host, port: ["127.0.0.2", "127.0.0.1"], delivery_timeout=2.0)

    with blackhole(fake.port):
        started = time.monotonic()
        webhook.deliver(message(f"http://hooks.example.test:{fake.port}/hook"))
        took = time.monotonic() - started
    webhook.close()

    assert len(fake.requests) == 1
    assert 0.3 <= took < 1.5


def test_connection_refused_is_transient(provider: WebhookProvider) -> None:
    receiver = FakeWebhook(SECRET).start()
    url = receiver.url
    receiver.stop()

    with pytest.raises(TransientDeliveryError) as caught:
        provider.deliver(message(url))

    assert not isinstance(caught.value, PermanentDeliveryError)


# What a sender reads back (status().last_error) is one text for every refusal after the DNS
# lookup: it named the addresses an internal name resolves to, so a sender could map the
# worker's DNS. The worker's log has the detail.
AFTER_LOOKUP = (
    "hooks.example.test has no public address that this worker may call "
    f"(the worker's log says why); {HINT} for private ones"
)


def unresolvable(host: str, port: int) -> list[str]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize(
    ("resolver", "refusal", "logged"),
    [
        (unresolvable, TransientDeliveryError, "cannot resolve hooks.example.test: [Errno -2] Name or"),
        (lambda host, port: [], TransientDeliveryError, "hooks.example.test has no address"),
        (pinned(), PermanentDeliveryError, "hooks.example.test resolves to 127.0.0.1, a loopback address"),
        (
            lambda host, port: ["93.184.216.34", "10.20.30.40"],
            PermanentDeliveryError,
            "hooks.example.test resolves to 10.20.30.40, a private address",
        ),
    ],
    ids=["does-not-resolve", "no-address", "loopback", "one-private-among-public"],
)
def test_every_refusal_after_the_dns_lookup_reads_the_same_and_only_the_log_has_the_detail(
    fake: FakeWebhook,
    caplog: pytest.LogCaptureFixture,
    resolver: object,
    refusal: type[DeliveryError],
    logged: str,
) -> None:
    webhook = make_provider(allow_private=False, resolver=resolver)

    with caplog.at_level(logging.WARNING, logger="notify.providers"), pytest.raises(DeliveryError) as caught:
        webhook.deliver(message(f"http://hooks.example.test:{fake.port}/hook"))

    assert type(caught.value) is refusal  # unresolvable: retried; a private address: refused for good
    assert caught.value.reason == AFTER_LOOKUP
    assert logged in caplog.text
    assert fake.requests == []
    assert fake.connection_count == 0


def test_a_name_that_does_not_resolve_is_transient() -> None:
    webhook = make_provider(resolver=unresolvable)

    with pytest.raises(TransientDeliveryError) as caught:
        webhook.deliver(message("https://hooks.example.test/hook"))

    assert (caught.value.code, caught.value.reason) == ("dns", AFTER_LOOKUP)


# SSRF at delivery time


def test_a_name_resolving_to_a_private_address_is_refused_before_anything_is_sent(fake: FakeWebhook) -> None:
    webhook = make_provider(allow_private=False, resolver=pinned())

    with pytest.raises(PermanentDeliveryError) as caught:
        webhook.deliver(message(f"http://hooks.example.test:{fake.port}/hook"))

    assert (caught.value.code, caught.value.reason) == ("private_address", AFTER_LOOKUP)
    assert "127.0.0.1" not in str(caught.value)
    assert fake.requests == []
    assert fake.connection_count == 0


def test_one_private_address_among_public_ones_is_refused(fake: FakeWebhook) -> None:
    webhook = make_provider(allow_private=False, resolver=lambda host, port: ["93.184.216.34", "10.0.0.7"])

    with pytest.raises(PermanentDeliveryError) as caught:
        webhook.deliver(message(f"http://hooks.example.test:{fake.port}/hook"))

    assert caught.value.reason == AFTER_LOOKUP and "10.0.0.7" not in str(caught.value)
    assert fake.requests == []


def test_the_connection_goes_to_the_checked_address_with_the_original_host(fake: FakeWebhook) -> None:
    # hooks.example.test is not in DNS (.test is reserved): only the pinned address reaches the fake.
    webhook = make_provider(resolver=pinned())
    try:
        webhook.deliver(message(f"http://hooks.example.test:{fake.port}/hook?x=1"))
    finally:
        webhook.close()

    [received] = fake.requests
    assert received.headers["host"] == f"hooks.example.test:{fake.port}"
    assert received.path == "/hook?x=1"
    assert received.signature_ok


def test_close_closes_the_warm_connections(fake: FakeWebhook, provider: WebhookProvider) -> None:
    provider.deliver(message(fake.url))
    provider.close()
    provider.deliver(message(fake.url))

    assert fake.connection_count == 2


# HTTPS


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for hooks.example.test: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: object
    ) -> bytes:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )
        if subject == "test CA":
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        else:
            san = x509.SubjectAlternativeName([x509.DNSName("hooks.example.test")])
            builder = builder.add_extension(san, critical=False)
        signed = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
        return signed.public_bytes(serialization.Encoding.PEM)

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.write_bytes(certificate("test CA", ca_key, ca_name, ca_key))
    cert.write_bytes(certificate("hooks.example.test", leaf_key, ca_name, ca_key))
    key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca, cert, key


@pytest.fixture
def tls_fake(tls_files: tuple[Path, Path, Path]) -> Iterator[FakeWebhook]:
    _, cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with FakeWebhook(SECRET, tls=context) as receiver:
        yield receiver


def test_https_to_the_pinned_address_checks_the_certificate_for_the_host(
    tls_fake: FakeWebhook, tls_files: tuple[Path, Path, Path]
) -> None:
    webhook = make_provider(resolver=pinned(), ca_certs=str(tls_files[0]))
    try:
        webhook.deliver(message(f"https://hooks.example.test:{tls_fake.port}/hook"))
    finally:
        webhook.close()

    [received] = tls_fake.requests
    assert received.headers["host"] == f"hooks.example.test:{tls_fake.port}"
    assert received.signature_ok


def test_https_with_a_certificate_for_another_name_is_transient_and_sends_nothing(
    tls_fake: FakeWebhook, tls_files: tuple[Path, Path, Path]
) -> None:
    webhook = make_provider(resolver=lambda host, port: ["127.0.0.1"], ca_certs=str(tls_files[0]))
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            webhook.deliver(message(f"https://other.example.test:{tls_fake.port}/hook"))
    finally:
        webhook.close()

    assert not isinstance(caught.value, PermanentDeliveryError)
    assert tls_fake.requests == []


def test_a_tls_error_after_the_request_was_sent_leaves_the_outcome_unknown(
    tls_files: tuple[Path, Path, Path],
) -> None:
    ca, cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    received: list[bytes] = []

    def garbled_answer(connection: socket.socket) -> None:
        with context.wrap_socket(connection, server_side=True) as tls:
            received.append(read_request(tls))
            os.write(tls.fileno(), b"HTTP/1.1 200 OK\r\n\r\n")  # plain text inside TLS: a record error
            tls.recv(1)

    webhook = make_provider(resolver=pinned(), ca_certs=str(ca))
    with raw_server(garbled_answer) as port:
        try:
            with pytest.raises(OutcomeUnknownError, match="SSLError"):
                webhook.deliver(message(f"https://hooks.example.test:{port}/hook"))
        finally:
            webhook.close()

    assert len(received) == 1


def test_a_receiver_that_trickles_its_answer_cannot_hold_the_attempt_past_its_budget() -> None:
    """One byte every 0.25 s takes 20 s; the attempt's 1 s budget ends it, an unknown outcome, one POST."""
    receiver = TricklingReceiver()
    webhook = make_provider(delivery_timeout=1.0)
    message = WebhookMessage(delivery_id="d-1", url=f"http://127.0.0.1:{receiver.port}/hook", body=BODY)
    try:
        with pytest.raises(OutcomeUnknownError, match="no complete answer within the time budget"):
            webhook.deliver(message)
        assert not receiver.finished.is_set()  # it ended while the receiver was still trickling
        assert receiver.cut.wait(10)  # and the connection is closed, not left to trickle on
        assert receiver.requests == 1
    finally:
        receiver.close()
        webhook.close()
