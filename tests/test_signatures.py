"""`send()` is declared once: the module functions are the notifier's methods, and `Intent` matches them."""

from __future__ import annotations

import dataclasses
import inspect

import notify
from notify.api import Notifier


def _without_self(method: object) -> inspect.Signature:
    signature = inspect.signature(method)  # type: ignore[arg-type]
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def test_the_module_functions_have_the_notifiers_signatures_and_docstrings() -> None:
    for name in ("send", "send_many", "status"):
        function, method = getattr(notify, name), getattr(Notifier, name)
        assert inspect.signature(function) == _without_self(method), name
        assert function.__doc__ == method.__doc__ and function.__doc__, name


def test_every_argument_of_send_is_a_field_of_intent_with_the_same_default() -> None:
    parameters = inspect.signature(notify.send).parameters
    intent_fields = {f.name: f for f in dataclasses.fields(notify.Intent) if f.name != "_"}
    assert list(intent_fields) == list(parameters)
    for name, parameter in parameters.items():
        field = intent_fields[name]
        default = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        assert default == parameter.default, name
        assert str(field.type) == str(parameter.annotation), name


def test_the_public_api_documents_its_parameters() -> None:
    for function in (notify.send, notify.send_many):
        assert function.__doc__ is not None
        for name in inspect.signature(function).parameters:
            assert f"{name}:" in function.__doc__, f"{function.__name__} does not document {name}"
