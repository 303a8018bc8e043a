"""What every provider implements: one rendered message in, one receipt out.

`Message` is the channels' (each channel subclasses it); it is named here too
for whoever writes a provider.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from notify.channels import Message

__all__ = ["Message", "Provider", "Receipt"]

if TYPE_CHECKING:
    from notify.settings import Settings


@dataclass(frozen=True)
class Receipt:
    """What a provider answered: its own id for the message, when it gives one."""

    provider_id: str | None = None


class Provider(Protocol):
    """A delivery backend for one channel.

    A channel's spec names its providers by dotted path (`ChannelSpec.backends`),
    and `NOTIFY_<CHANNEL>_BACKEND` may name one of your own, so a new provider
    is one module. A provider is built once per worker process and may keep
    connections.
    """

    name: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Provider:
        """Build the provider, or raise `ConfigurationError` so the worker refuses to start.

        Args:
            settings: notify's settings; a provider reads its own variables with
                `settings.provider_settings(ItsSettings)` and names a missing or
                invalid one in the error (`setting=`).
        """
        ...

    def deliver(self, message: Message) -> Receipt:
        """Hand `message` to the service once; classify what goes wrong, here.

        Args:
            message: the channel's message (for example an `EmailMessage`).

        Raises:
            TransientDeliveryError: nothing was delivered and a later try may succeed
                (network, 429, 5xx); `retry_after` carries the service's hint.
            PermanentDeliveryError: the service refused it for good.
            OutcomeUnknownError: the message was handed over and no answer came:
                retrying could send a second copy.
            ConfigurationError: the credentials or settings are wrong.
        """
        ...

    def close(self) -> None:
        """Release connections; the provider is not used again."""
        ...
