"""notify: multi-channel notification delivery on Celery.

import notify
result = notify.send("welcome", to={"email": "ada@example.com"}, data={"name": "Ada"})
notify.status(result.id)
notify.send_many([notify.Intent("welcome", to={"email": "bob@example.com"}, data={"name": "Bob"})])
"""

from notify.api import send, send_many, status, suppress, suppressions, unsuppress
from notify.constants import VERSION as _VERSION
from notify.errors import (
    ConfigurationError,
    DeliveryError,
    NotifyError,
    OutcomeUnknownError,
    PartiallyRecorded,
    PermanentDeliveryError,
    StoreUnavailable,
    TemplateError,
    TransientDeliveryError,
    ValidationError,
)
from notify.models import (
    Delivery,
    Intent,
    Priority,
    Recipient,
    SendResult,
    Status,
    Suppression,
    SuppressionReason,
)

__version__ = _VERSION  # pyproject.toml's, as installed: one place

__all__ = [
    "ConfigurationError",
    "Delivery",
    "DeliveryError",
    "Intent",
    "NotifyError",
    "OutcomeUnknownError",
    "PartiallyRecorded",
    "PermanentDeliveryError",
    "Priority",
    "Recipient",
    "SendResult",
    "Status",
    "StoreUnavailable",
    "Suppression",
    "SuppressionReason",
    "TemplateError",
    "TransientDeliveryError",
    "ValidationError",
    "send",
    "send_many",
    "status",
    "suppress",
    "suppressions",
    "unsuppress",
]
