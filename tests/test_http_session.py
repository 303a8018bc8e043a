"""The HTTP providers' session: the environment's proxy and CA settings, read once per origin.

Compared with a plain requests session under the same environment, and shown
in use: an SMS goes through a proxy named by HTTP_PROXY (a real forwarding
proxy on loopback, the real twilio client behind it).
"""

from __future__ import annotations

import http.server
import threading
import urllib.request
from collections.abc import Iterator

import pytest
import requests

from notify.channels.sms import SmsMessage
from notify.providers.http import EnvironmentOnceSession
from notify.providers.twilio import TwilioProvider
from notify.settings import Secret
from tests.fakes.twilio import FakeTwilio

CASES = [
    {},
    {"HTTPS_PROXY": "http://proxy.example:3128"},
    {"HTTPS_PROXY": "http://proxy.example:3128", "NO_PROXY": "api.twilio.com"},
    {"HTTP_PROXY": "http://proxy.example:3128", "NO_PROXY": "other.example"},
    {"REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"},
    {"CURL_CA_BUNDLE": "/tmp/bundle.pem"},
]
URLS = [
    "https://api.twilio.com/2010-04-01/Accounts",
    "http://127.0.0.1:8080/x",
    "https://fcm.googleapis.com/v1",
]


def clear_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
    ):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.mark.parametrize("environment", CASES, ids=lambda e: ",".join(e) or "nothing")
@pytest.mark.parametrize("url", URLS)
def test_it_takes_the_settings_requests_would(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], url: str
) -> None:
    clear_environment(monkeypatch)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    ours = EnvironmentOnceSession().merge_environment_settings(url, {}, None, None, None)
    theirs = requests.Session().merge_environment_settings(url, {}, None, None, None)

    assert ours == theirs


def test_it_reads_the_environment_once_per_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_environment(monkeypatch)
    session = EnvironmentOnceSession()
    first = session.merge_environment_settings(URLS[0], {}, None, None, None)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")

    assert session.merge_environment_settings(URLS[0] + "/other", {}, None, None, None) == first
    assert session.merge_environment_settings(URLS[2], {}, None, None, None)["proxies"] == {
        "https": "http://proxy.example:3128"
    }  # a new origin: read now


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A forwarding HTTP proxy: it relays absolute-URI requests and counts them."""

    seen: list[str] = []

    def do_POST(self) -> None:
        self.seen.append(self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")}
        upstream = urllib.request.Request(self.path, data=body, headers=headers, method="POST")
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # not through itself
        with direct.open(upstream, timeout=10) as answer:
            payload = answer.read()
            self.send_response(answer.status)
            for key, value in answer.headers.items():
                if key.lower() not in ("transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_sms_goes_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch, proxy: str
) -> None:
    clear_environment(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    _Proxy.seen.clear()
    with FakeTwilio() as fake:
        provider = TwilioProvider(
            account_sid=fake.account_sid,
            auth_token=Secret(fake.auth_token),
            sender="+14155550100",
            base_url=fake.url,
        )
        receipt = provider.deliver(SmsMessage(delivery_id="d-1", to="+14155550101", body="hi"))
        provider.close()

    assert receipt.provider_id
    assert len(_Proxy.seen) == 1 and _Proxy.seen[0].startswith(fake.url)
