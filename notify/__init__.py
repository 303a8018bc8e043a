"""notify: multi-channel notification delivery on Celery.

import notify
result = notify.send("welcome", to={"email": "ada@example.com"}, data={"name": "Ada"})
notify.status(result.id)
"""

from notify.api import send, status
from notify.errors import (
    ConfigurationError,
    DeliveryError,
    NotifyError,
    OutcomeUnknownError,
    PermanentDeliveryError,
    StoreUnavailable,
    TemplateError,
    TransientDeliveryError,
    ValidationError,
)
from notify.models import Channel, Delivery, Priority, Recipient, SendResult, Status

__all__ = [
    "Channel",
    "ConfigurationError",
    "Delivery",
    "DeliveryError",
    "NotifyError",
    "OutcomeUnknownError",
    "PermanentDeliveryError",
    "Priority",
    "Recipient",
    "SendResult",
    "Status",
    "StoreUnavailable",
    "TemplateError",
    "TransientDeliveryError",
    "ValidationError",
    "send",
    "status",
]
