"""A backend named by dotted path: imported, or refused with a ConfigurationError naming its variable."""

from __future__ import annotations

import pytest

from notify.errors import ConfigurationError
from notify.providers import load_provider
from notify.settings import Settings
from notify.testing import MEMORY_BACKEND, MemoryProvider


@pytest.mark.parametrize(
    "path",
    ["tests.support.no_such_module:Provider", "notify.testing:NoSuchProvider", ":MemoryProvider"],
)
def test_a_backend_path_that_does_not_import_is_a_configuration_error(path: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_provider("sms", Settings(backends=(("sms", path),)))
    message = str(caught.value)
    assert "NOTIFY_SMS_BACKEND" in message and path in message and "\n" not in message
    assert caught.value.setting == "NOTIFY_SMS_BACKEND"


def test_a_backend_path_that_imports_gives_its_provider() -> None:
    assert isinstance(load_provider("push", Settings(backends=(("push", MEMORY_BACKEND),))), MemoryProvider)


def test_a_provider_that_cannot_be_built_is_a_configuration_error_naming_its_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_provider("sms", Settings(backends=(("sms", "tests.support.hooks:BuggyProvider"),)))
    assert str(caught.value) == (
        "NOTIFY_SMS_BACKEND 'tests.support.hooks:BuggyProvider' cannot be built from its settings "
        "(KeyError: 'ACME_REGION')"
    )
    assert caught.value.setting == "NOTIFY_SMS_BACKEND"
