"""One table per HTTP client library: which errors prove nothing was handed over."""

from __future__ import annotations

import socket
import ssl

import pytest
import requests
import urllib3.exceptions as u3
from urllib3.exceptions import MaxRetryError, ProtocolError

from notify.errors import OutcomeUnknownError, TransientDeliveryError
from notify.providers.http import (
    REQUESTS_ERRORS,
    URLLIB3_ERRORS,
    BudgetSpent,
    Handover,
    handover,
    network_error,
)

NONE, MAYBE = Handover.NONE, Handover.MAYBE


def wrapped(reason: Exception) -> requests.ConnectionError:
    """What requests raises for a failure urllib3 gave up on (no retries)."""
    return requests.ConnectionError(MaxRetryError(None, "/x", reason))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (requests.ConnectTimeout("slow to connect"), NONE),
        (BudgetSpent("no time left"), NONE),
        (requests.exceptions.SSLError("handshake"), NONE),
        (requests.exceptions.ProxyError("tunnel refused"), NONE),
        (wrapped(u3.NewConnectionError(None, "refused")), NONE),  # type: ignore[arg-type]
        (wrapped(u3.NameResolutionError("h.example", None, socket.gaierror())), NONE),  # type: ignore[arg-type]
        (wrapped(u3.ConnectTimeoutError("timed out")), NONE),
        (requests.exceptions.InvalidURL("no host"), NONE),
        (requests.ReadTimeout("slow answer"), MAYBE),
        (requests.exceptions.ChunkedEncodingError("cut"), MAYBE),
        (requests.exceptions.ContentDecodingError("gzip"), MAYBE),
        (requests.ConnectionError(ProtocolError("aborted", ConnectionResetError(104, "reset"))), MAYBE),
        (wrapped(u3.ProtocolError("aborted")), MAYBE),
        (requests.ConnectionError("no cause given"), MAYBE),
    ],
)
def test_the_requests_table(exc: Exception, expected: Handover) -> None:
    assert handover(exc, REQUESTS_ERRORS) is expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (u3.NewConnectionError(None, "refused"), NONE),  # type: ignore[arg-type]
        (u3.ConnectTimeoutError("timed out"), NONE),
        (u3.ReadTimeoutError(None, "/x", "slow"), MAYBE),  # type: ignore[arg-type]
        (u3.ProtocolError("aborted"), MAYBE),
        (ssl.SSLError("bad record mac"), MAYBE),  # after the request was written
        (ConnectionResetError(104, "reset"), MAYBE),
    ],
)
def test_the_urllib3_table(exc: Exception, expected: Handover) -> None:
    assert handover(exc, URLLIB3_ERRORS) is expected


def test_network_error_retries_only_what_was_not_handed_over() -> None:
    refused = network_error(wrapped(u3.NewConnectionError(None, "refused")), channel="sms", provider="twilio")  # type: ignore[arg-type]
    timed_out = network_error(requests.ReadTimeout("slow"), channel="sms", provider="twilio")

    assert type(refused) is TransientDeliveryError
    assert type(timed_out) is OutcomeUnknownError
    assert "may have been accepted" in timed_out.reason
