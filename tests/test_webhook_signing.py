"""Webhook signatures the Standard Webhooks way: each receiver's own secret, rotations, README's verify()."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import urllib3
from standardwebhooks import Webhook

from notify.channels.webhook import WebhookMessage
from notify.errors import ConfigurationError, TransientDeliveryError
from notify.providers.webhook import WebhookProvider, WebhookProviderSettings
from notify.providers.webhook_signing import SecretsHook, WebhookSecrets, sign, signing_key
from notify.settings import Secret, Settings
from tests.fakes.webhook import FakeWebhook, Received, verifies

DEFAULT = "the-default-secret"
OLD, NEW = "whsec_" + base64.b64encode(b"o" * 32).decode(), "whsec_" + base64.b64encode(b"n" * 32).decode()
BODY = '{"event": "welcome", "name": "Ada"}'
README = Path(__file__).resolve().parent.parent / "README.md"

# The test vector of the Standard Webhooks reference libraries (their sign() tests).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.fixture
def providers() -> Iterator[Callable[..., WebhookProvider]]:
    built: list[WebhookProvider] = []

    def build(secrets_for: SecretsHook | None = None, default: str = DEFAULT) -> WebhookProvider:
        built.append(
            WebhookProvider(
                Secret(default), secrets_for=secrets_for, allow_private=True, delivery_timeout=5.0
            )
        )
        return built[-1]

    yield build
    for provider in built:
        provider.close()


@pytest.fixture
def receiver_a() -> Iterator[FakeWebhook]:
    with FakeWebhook(OLD, refuse_unverified=True) as fake:
        yield fake


@pytest.fixture
def receiver_b() -> Iterator[FakeWebhook]:
    with FakeWebhook(NEW, refuse_unverified=True) as fake:
        yield fake


def deliver(provider: WebhookProvider, url: str, delivery_id: str = "dlv-1") -> None:
    provider.deliver(WebhookMessage(delivery_id=delivery_id, url=url, body=BODY))


def signatures(request: Received) -> list[str]:
    return request.headers["webhook-signature"].split(" ")


# signing


def test_signing_reproduces_the_standard_webhooks_test_vector() -> None:
    signed = sign([signing_key(VECTOR_SECRET)], VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)

    assert signed == VECTOR_SIGNATURE


def test_a_secret_without_the_prefix_keys_with_its_utf8_bytes() -> None:
    digest = hmac.new("clé".encode(), b"dlv-7.1700000000.{}", hashlib.sha256).digest()

    assert signing_key("clé") == "clé".encode()
    assert sign([signing_key("clé")], "dlv-7", 1700000000, b"{}") == f"v1,{base64.b64encode(digest).decode()}"


def test_a_whsec_secret_is_decoded_as_the_library_decodes_it_padded_or_not() -> None:
    unpadded = "whsec_" + base64.b64encode(b"sixteen-byte-key!").decode().rstrip("=")

    assert signing_key(unpadded) == b"sixteen-byte-key!"
    assert sign([signing_key(unpadded)], "m", 1, b"x") == Webhook(unpadded).sign("m", _at(1), b"x")


def test_several_keys_sign_once_each_in_order_space_separated() -> None:
    one, two = sign([b"one"], "m", 5, b"{}"), sign([b"two"], "m", 5, b"{}")

    assert sign([b"one", b"two"], "m", 5, b"{}") == f"{one} {two}"


@pytest.mark.parametrize(
    "secret",
    ["", "whsec_", "whsec_not base64!", "whsec_clé0", "whsec_====", "bad\udcffsecret"],
    ids=["empty", "empty-after-prefix", "not-base64", "non-ascii", "only-padding", "lone-surrogate"],
)
def test_an_unusable_secret_is_refused_without_showing_it(secret: str) -> None:
    with pytest.raises(ValueError) as refused:
        signing_key(secret)

    shown = secret.removeprefix("whsec_")
    assert shown not in str(refused.value) or not shown.strip("=")
    assert "\udcff" not in str(refused.value)


def test_a_worker_refuses_an_unusable_default_secret_naming_it_not_showing_it() -> None:
    settings = Settings().with_environ(NOTIFY_WEBHOOK_SECRET="whsec_hunter2!")

    with pytest.raises(ConfigurationError) as refused:
        WebhookProvider.from_settings(settings)

    assert refused.value.setting == "NOTIFY_WEBHOOK_SECRET"
    assert str(refused.value).startswith("NOTIFY_WEBHOOK_SECRET: ")
    assert "hunter2" not in str(refused.value)


# interoperability: what the receivers' libraries accept


@pytest.mark.parametrize("secret", [OLD, DEFAULT], ids=["whsec", "raw"])
def test_the_standardwebhooks_library_verifies_notifys_requests(
    secret: str, providers: Callable[..., WebhookProvider]
) -> None:
    with FakeWebhook(secret) as fake:
        deliver(providers(default=secret), fake.url)
        [received] = fake.requests

    key: str | bytes = secret if secret.startswith("whsec_") else secret.encode()
    assert Webhook(key).verify(received.body, received.headers) == json.loads(BODY)
    assert received.signature_ok


# each receiver its own secret (NOTIFY_WEBHOOK_SECRETS)


def test_each_receiver_is_signed_with_its_own_secret_only(
    providers: Callable[..., WebhookProvider], receiver_a: FakeWebhook, receiver_b: FakeWebhook
) -> None:
    own = {receiver_a.url: OLD, receiver_b.url: NEW}
    provider = providers(own.get)

    deliver(provider, receiver_a.url, "dlv-a")
    deliver(provider, receiver_b.url, "dlv-b")

    [to_a], [to_b] = receiver_a.requests, receiver_b.requests
    assert to_a.signature_ok and to_b.signature_ok
    assert len(signatures(to_a)) == len(signatures(to_b)) == 1
    assert not verifies(NEW, to_a.headers, to_a.body)
    assert not verifies(OLD, to_b.headers, to_b.body)
    assert not verifies(DEFAULT, to_a.headers, to_a.body)


def test_a_receiver_refuses_a_request_replayed_or_forged_by_another(
    providers: Callable[..., WebhookProvider], receiver_a: FakeWebhook, receiver_b: FakeWebhook
) -> None:
    deliver(providers({receiver_a.url: OLD, receiver_b.url: NEW}.get), receiver_a.url)
    [to_a] = receiver_a.requests
    timestamp = to_a.headers["webhook-timestamp"]
    forged = sign([signing_key(OLD)], "dlv-forged", int(timestamp), b'{"event": "refund"}')
    replayed = {k: v for k, v in to_a.headers.items() if k.startswith("webhook-")}

    answers = [
        urllib3.request("POST", receiver_b.url, body=to_a.body, headers=replayed).status,
        urllib3.request(
            "POST",
            receiver_b.url,
            body=b'{"event": "refund"}',
            headers={"webhook-id": "dlv-forged", "webhook-timestamp": timestamp, "webhook-signature": forged},
        ).status,
    ]

    assert answers == [401, 401]
    assert [r.signature_ok for r in receiver_b.requests] == [False, False]


def test_a_url_the_hook_answers_none_for_is_signed_with_the_default_secret(
    providers: Callable[..., WebhookProvider],
) -> None:
    with FakeWebhook(DEFAULT, refuse_unverified=True) as fake:
        deliver(providers(lambda url: None), fake.url)
        [received] = fake.requests

    assert received.signature_ok
    assert len(signatures(received)) == 1


def test_during_a_rotation_both_secrets_sign_and_a_receiver_holding_either_verifies(
    providers: Callable[..., WebhookProvider], receiver_a: FakeWebhook
) -> None:
    deliver(providers(lambda url: [NEW, OLD]), receiver_a.url)

    [received] = receiver_a.requests  # receiver_a holds OLD only
    assert received.signature_ok
    assert len(signatures(received)) == 2
    assert verifies(NEW, received.headers, received.body)
    assert Webhook(NEW).verify(received.body, received.headers) == json.loads(BODY)


def test_the_hook_is_asked_at_every_attempt_so_a_rotation_applies_to_the_next(
    providers: Callable[..., WebhookProvider], receiver_a: FakeWebhook
) -> None:
    answers: dict[str, str | list[str]] = {receiver_a.url: OLD}
    asked: list[str] = []

    def secrets_for(url: str) -> str | list[str] | None:
        asked.append(url)
        return answers.get(url)

    provider = providers(secrets_for)
    deliver(provider, receiver_a.url, "dlv-1")
    answers[receiver_a.url] = [NEW, OLD]
    deliver(provider, receiver_a.url, "dlv-2")
    answers[receiver_a.url] = NEW
    receiver_a.refuse_unverified = False
    deliver(provider, receiver_a.url, "dlv-3")

    first, second, third = receiver_a.requests
    assert asked == [receiver_a.url] * 3
    assert [len(signatures(r)) for r in (first, second, third)] == [1, 2, 1]
    assert [r.signature_ok for r in (first, second, third)] == [True, True, False]
    assert [verifies(NEW, r.headers, r.body) for r in (first, second, third)] == [False, True, True]


class Leaky(Exception):
    pass


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (Leaky("the secret is hunter2"), "raised Leaky"),
        ([], "returned list, not a secret or a non-empty list of them"),
        (42, "returned int, not a secret or a non-empty list of them"),
        ({"hunter2"}, "returned set, not a secret or a non-empty list of them"),
        ("", "returned an unusable secret (a secret must not be empty)"),
        (["whsec_hunter2!"], "returned an unusable secret (a secret that starts with whsec_ must be base64"),
        ([OLD, 7], "returned an unusable secret (a secret must be a string, not int)"),
    ],
    ids=["raises", "empty-list", "int", "set", "empty-string", "bad-whsec", "not-a-string"],
)
def test_a_failing_hook_sends_nothing_and_is_retried_without_showing_what_it_said(
    answer: object,
    problem: str,
    providers: Callable[..., WebhookProvider],
    receiver_a: FakeWebhook,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def secrets_for(url: str) -> object:
        if isinstance(answer, Exception):
            raise answer
        return answer

    with pytest.raises(TransientDeliveryError) as caught:
        deliver(providers(secrets_for), receiver_a.url)

    assert caught.value.code == "webhook_secret"
    assert f"NOTIFY_WEBHOOK_SECRETS {problem}" in str(caught.value)
    assert "hunter2" not in str(caught.value) + caplog.text
    assert receiver_a.requests == []
    assert receiver_a.connection_count == 0


def test_from_settings_imports_the_hook_named_by_notify_webhook_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver_b: FakeWebhook
) -> None:
    answers = tmp_path / "secrets.json"
    answers.write_text(json.dumps({receiver_b.url: NEW}))
    monkeypatch.setenv("NOTIFY_TEST_WEBHOOK_SECRETS", str(answers))
    settings = Settings().with_environ(
        NOTIFY_WEBHOOK_SECRET=DEFAULT,
        NOTIFY_WEBHOOK_SECRETS="tests.support.webhook_secrets:secrets_for",
        NOTIFY_WEBHOOK_ALLOW_PRIVATE="1",
    )
    provider = WebhookProvider.from_settings(settings)
    try:
        deliver(provider, receiver_b.url)
    finally:
        provider.close()

    [received] = receiver_b.requests
    assert received.signature_ok
    assert settings.provider_settings(WebhookProviderSettings).secrets_hook == (
        "tests.support.webhook_secrets:secrets_for"
    )


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ("tests.support.no_such_module:secrets_for", "does not import (ModuleNotFoundError"),
        ("tests.support.webhook_secrets", "must be 'module:function'"),
        ("tests.support.webhook_secrets:__doc__", "is not callable"),
    ],
)
def test_from_settings_refuses_a_broken_hook_naming_the_setting(hook: str, message: str) -> None:
    settings = Settings().with_environ(NOTIFY_WEBHOOK_SECRET=DEFAULT, NOTIFY_WEBHOOK_SECRETS=hook)

    with pytest.raises(ConfigurationError) as refused:
        WebhookProvider.from_settings(settings)

    assert refused.value.setting == "NOTIFY_WEBHOOK_SECRETS"
    assert str(refused.value).startswith("NOTIFY_WEBHOOK_SECRETS ")
    assert message in str(refused.value)


def test_no_secret_shows_in_reprs() -> None:
    secrets = WebhookSecrets(Secret(DEFAULT), lambda url: OLD)
    provider = WebhookProvider(Secret(DEFAULT), secrets_for=lambda url: OLD)

    for shown in (repr(secrets), str(secrets), repr(provider)):
        assert DEFAULT not in shown and OLD not in shown


# README's verify(), run as README shows it


def readme_verify() -> Callable[[str, Mapping[str, str], bytes], bool]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    [code] = [block for block in blocks if "def verify(" in block]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["verify"]  # type: ignore[return-value]


def signed_headers(
    secrets: Sequence[str], *, webhook_id: str = "dlv-1", at: int | None = None
) -> dict[str, str]:
    timestamp = int(time.time()) if at is None else at
    keys = [signing_key(secret) for secret in secrets]
    signature = sign(keys, webhook_id, timestamp, BODY.encode())
    return {"Webhook-Id": webhook_id, "Webhook-Timestamp": str(timestamp), "Webhook-Signature": signature}


UNPADDED = "whsec_" + base64.b64encode(b"sixteen-byte-key!").decode().rstrip("=")


@pytest.mark.parametrize("secret", [OLD, UNPADDED, DEFAULT], ids=["whsec", "whsec-unpadded", "raw"])
def test_readmes_verify_accepts_notifys_requests(
    secret: str, providers: Callable[..., WebhookProvider]
) -> None:
    verify = readme_verify()
    with FakeWebhook(secret) as fake:
        deliver(providers(lambda url: [NEW, secret]), fake.url)
        [received] = fake.requests

    assert verify(secret, received.headers, received.body)
    assert verify(NEW, received.headers, received.body)
    assert not verify(DEFAULT if secret == OLD else OLD, received.headers, received.body)


def _without(name: str) -> dict[str, str]:
    return {k: v for k, v in signed_headers([OLD]).items() if k != name}


def _with(**changed: str) -> dict[str, str]:
    return {**signed_headers([OLD]), **{k.replace("_", "-").title(): v for k, v in changed.items()}}


HOSTILE: dict[str, Callable[[], Mapping[str, str]]] = {
    "no-headers": dict,
    "no-id": lambda: _without("Webhook-Id"),
    "no-timestamp": lambda: _without("Webhook-Timestamp"),
    "no-signature": lambda: _without("Webhook-Signature"),
    "empty-signature": lambda: _with(webhook_signature=""),
    "non-ascii-signature": lambda: _with(webhook_signature="v1,é" + "A" * 42),
    "non-ascii-id": lambda: _with(webhook_id="dlv-é"),
    "superscript-timestamp": lambda: _with(webhook_timestamp="²"),
    "arabic-indic-timestamp": lambda: _with(webhook_timestamp="\u0661\u0667" + "\u0660" * 8),
    "negative-timestamp": lambda: _with(webhook_timestamp="-1"),
    "float-timestamp": lambda: _with(webhook_timestamp=f"{time.time():.3f}"),
    "huge-timestamp": lambda: _with(webhook_timestamp="9" * 5000),
    "too-old": lambda: signed_headers([OLD], at=int(time.time()) - 301),
    "too-new": lambda: signed_headers([OLD], at=int(time.time()) + 301),
    "another-id": lambda: _with(webhook_id="dlv-2"),
    "another-secret": lambda: signed_headers([NEW]),
    "several-none-valid": lambda: signed_headers([NEW, DEFAULT]),
    "unversioned": lambda: _with(webhook_signature=signed_headers([OLD])["Webhook-Signature"][3:]),
}


@pytest.mark.parametrize("headers", HOSTILE.values(), ids=HOSTILE.keys())
def test_readmes_verify_returns_false_never_raises_on_hostile_headers(
    headers: Callable[[], Mapping[str, str]],
) -> None:
    assert readme_verify()(OLD, headers(), BODY.encode()) is False


# Built when the test runs, not when it is collected: a suite takes longer than the 300 s window.
VALID: dict[str, Callable[[], Mapping[str, str]]] = {
    "new-then-old": lambda: signed_headers([NEW, OLD]),
    "old-then-new": lambda: signed_headers([OLD, NEW]),
    "among-junk": lambda: _with(
        webhook_signature="v1,bm9wZQ==  v1,x " + signed_headers([OLD])["Webhook-Signature"]
    ),
    "lowercase-names": lambda: {k.lower(): v for k, v in signed_headers([OLD]).items()},
    "290-s-old": lambda: signed_headers([OLD], at=int(time.time()) - 290),
}


@pytest.mark.parametrize("headers", VALID.values(), ids=VALID.keys())
def test_readmes_verify_accepts_one_valid_signature_among_several(
    headers: Callable[[], Mapping[str, str]],
) -> None:
    assert readme_verify()(OLD, headers(), BODY.encode()) is True


def _at(timestamp: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
