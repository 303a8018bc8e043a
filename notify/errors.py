"""The errors notify raises.

    NotifyError
    ├── ConfigurationError          a setting or policy is missing or invalid
    ├── StoreUnavailable            the store (database) cannot be reached
    │   └── PartiallyRecorded       send_many() recorded some batches before it
    ├── ValidationError             send() rejected its input; .field names it
    │   └── TemplateError           a template is missing, broken or lacks data
    └── DeliveryError               a provider refused or failed a delivery
        ├── TransientDeliveryError  worth retrying; .retry_after is the provider's hint
        └── PermanentDeliveryError  retrying cannot help
            └── OutcomeUnknownError the provider may have accepted it: not retried,
                                    so a slow reply never becomes a second copy

Errors carry context (field, channel, provider, provider code) and never
secrets or message bodies. A duplicate is an outcome, not an error.

A failure notify itself finds, not a provider, names a `CoreProvider` and a
`CoreCode`; the code is what the store keeps and `notify dlq list` shows.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from notify.models import Intent, SendResult

__all__ = [
    "ConfigurationError",
    "CoreCode",
    "CoreProvider",
    "DeliveryError",
    "NotifyError",
    "OutcomeUnknownError",
    "PartiallyRecorded",
    "PermanentDeliveryError",
    "StoreUnavailable",
    "TemplateError",
    "TransientDeliveryError",
    "ValidationError",
    "one_line",
]


class CoreProvider(enum.StrEnum):
    """The `provider` of a failure that notify found itself, before or around the real provider."""

    TEMPLATES = "templates"
    """The template no longer renders in the worker (it changed since `send()` checked it)."""
    CONFIGURATION = "config"
    """The provider refused its own settings (bad credentials, a misconfigured sender)."""
    NOTIFY = "notify"
    """notify itself: a bug, a worker that died on every try, or a provider's unexplained error."""


class CoreCode(enum.StrEnum):
    """The error codes notify writes itself; stored on the delivery, so operators filter on them.

    The values never change: rows already in the store carry them.
    """

    TEMPLATE = "template"
    """Failed for good: the template does not render for this delivery (provider `templates`)."""
    CONFIGURATION = "configuration"
    """Kept for retry, logged as critical: the provider's settings need an operator (provider `config`)."""
    ADDRESS = "address"
    """Failed for good: the address no longer passes its channel's check (a setting changed since send())."""
    BUG = "bug"
    """Kept for retry: an unexpected error before anything was handed over (provider `notify`)."""
    OUTCOME_UNKNOWN = "outcome_unknown"
    """Failed for good, not retried: it may have been sent (any provider; see OutcomeUnknownError)."""


class NotifyError(Exception):
    """Base class of every error notify raises."""


class ConfigurationError(NotifyError):
    """A setting or policy is missing or invalid; `setting` names it."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class SchemaOutdated(ConfigurationError):
    """The store's schema is not at this release's revision: `notify db upgrade` brings it there.

    `revision`: the store's (None: made by a release before revisions were kept);
    `required`: this release's.
    """

    def __init__(self, revision: str | None, required: str) -> None:
        self.revision, self.required = revision, required
        if revision is not None and revision > required:
            message = (
                f"the store's schema is at revision {revision}, newer than this release's {required}: "
                "upgrade notify"
            )
        else:
            at = "was made before revisions were kept" if revision is None else f"is at revision {revision}"
            message = f"the store's schema {at}; this release needs revision {required}: "
            message += "run `notify db upgrade`"
        super().__init__(message, setting="NOTIFY_DATABASE_URL")


class ValidationError(NotifyError, ValueError):
    """`send()` rejected its input; `field` names the offending argument."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class TemplateError(ValidationError):
    """A template is missing, does not render, or needs data that was not given."""


class DeliveryError(NotifyError):
    """A provider failed a delivery.

    `code` is the provider's own code (SMTP reply code, Twilio error code,
    FCM error status) and `reason` its message, both kept on the delivery.
    """

    def __init__(
        self,
        reason: str,
        *,
        channel: str,
        provider: str,
        code: str | None = None,
    ) -> None:
        super().__init__(f"{provider} ({channel}): {code + ' ' if code else ''}{reason}")
        self.reason = reason
        self.channel = channel
        self.provider = provider
        self.code = code


class TransientDeliveryError(DeliveryError):
    """A failure worth retrying; `retry_after` is the provider's hint in seconds."""

    def __init__(
        self,
        reason: str,
        *,
        channel: str,
        provider: str,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason, channel=channel, provider=provider, code=code)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """A failure that retrying cannot fix (bad address, unregistered token).

    `suppress`: the address is gone for good, and why (a `SuppressionReason`
    value: "bounced", "opted_out", "unregistered"): the worker puts it on the
    suppression list, and later sends to it are recorded `suppressed`.
    """

    def __init__(
        self,
        reason: str,
        *,
        channel: str,
        provider: str,
        code: str | None = None,
        suppress: str | None = None,
    ) -> None:
        super().__init__(reason, channel=channel, provider=provider, code=code)
        self.suppress = suppress


class OutcomeUnknownError(PermanentDeliveryError):
    """The message was handed over but no answer came: it may have been sent.

    Retrying could deliver a second copy, so the delivery fails into the
    dead-letter store instead, where an operator can check and replay it.
    The address is not at fault: the permanent-failure hook is not called.
    Its code is always "outcome_unknown", so operators can list them.
    """

    CODE = CoreCode.OUTCOME_UNKNOWN

    def __init__(self, reason: str, *, channel: str, provider: str) -> None:
        super().__init__(reason, channel=channel, provider=provider, code=self.CODE)


class StoreUnavailable(NotifyError):
    """The store could not be reached or did not answer; nothing was recorded."""


class PartiallyRecorded(StoreUnavailable):
    """`send_many()` lost the store after recording some of its intents, batch by batch.

    `results` are the `SendResult`s of the intents recorded (and enqueued), in
    order: the first `len(results)` intents. `remaining` are the intents after
    them, none of which was recorded: `send_many(exc.remaining)` records each
    of them once. One batch is in doubt if the store went away during its
    COMMIT (the database may have kept it without saying so); an intent with a
    `dedup_key` comes out of such a retry as a duplicate instead of twice.
    """

    def __init__(self, cause: StoreUnavailable, results: list[SendResult], remaining: list[Intent]) -> None:
        total = len(results) + len(remaining)
        super().__init__(
            f"recorded {len(results)} of {total} intents, then: {cause}; "
            f"intents[{len(results)}:] were not recorded (retry them: .remaining)"
        )
        self.results = results
        self.remaining = remaining


def one_line(exc: NotifyError) -> str:
    """The error on one line, naming the setting at fault when its message does not."""
    reason = " ".join(str(exc).split())
    setting = exc.setting if isinstance(exc, ConfigurationError) else None
    return reason if setting is None or setting in reason else f"{setting}: {reason}"
