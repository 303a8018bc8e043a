"""The channel registry: notify's channels are found in notify/channels/, another package's through
an entry point, and the core (send, templates, policies, outbox, notify.testing, CLI) iterates them."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import notify
import notify.testing
from notify import channels
from notify.channels import ChannelSpec
from notify.errors import ConfigurationError
from notify.models import Recipient
from notify.policy import ChannelPolicy

REPO = Path(__file__).resolve().parents[1]

FAX_MODULE = """
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from notify.channels import ChannelSpec
from notify.models import check_text
from notify.policy import ChannelPolicy
from notify.providers.base import Message
from notify.settings import Settings


@dataclass(frozen=True)
class FaxMessage(Message):
    to: str
    body: str
    channel: ClassVar[str] = "fax"


def check(value: object, settings: Settings) -> str:
    return check_text("to.fax_number", value, 32)


def size(rendered: Mapping[str, str]) -> str | None:
    return None if len(rendered["body"]) <= 100 else "is over a page"


def build(delivery_id: str, address: str, rendered: Mapping[str, str], settings: Settings) -> FaxMessage:
    return FaxMessage(delivery_id=delivery_id, to=address, body=rendered["body"])


CHANNEL = ChannelSpec(
    name="fax",
    address="fax_number",
    check_address=check,
    parts={"body": "fax.txt.j2"},
    check_rendered=size,
    build=build,
    policy=ChannelPolicy(max_attempts=2),
    backends={"outbox": "notify.providers.outbox:OutboxProvider"},
    default_backend="outbox",
    plural="faxes",
    rank=50,
)
"""


def plugin(tmp_path: Path, entry: str = "fax = faxchannel:CHANNEL") -> Path:
    """A package `faxchannel` installed on `tmp_path`: a module and a dist-info with its entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "faxchannel.py").write_text(FAX_MODULE)
    info = site / "faxchannel-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faxchannel\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[notify.channels]\n{entry}\n")
    templates = tmp_path / "templates" / "hello"
    templates.mkdir(parents=True)
    (templates / "fax.txt.j2").write_text("Hello {{ name }}, by fax.")
    (templates / "email.subject.j2").write_text("Hello")
    (templates / "email.txt.j2").write_text("Hello {{ name }}.")
    return site


def run(site: Path, tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
        "NOTIFY_HOME": str(tmp_path / "home"),
        "NOTIFY_TEMPLATES_DIR": str(tmp_path / "templates"),
        "NOTIFY_EMAIL_FROM": "notify@example.com",
    }
    return subprocess.run(
        [sys.executable, *(["-c", textwrap.dedent(code)] if code else []), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- notify's own channels --------------------------------------------------------------


def test_notifys_own_channels_are_found_in_rank_order() -> None:
    assert channels.names() == ("email", "sms", "push", "webhook")
    assert {s.address for s in channels.channels().values()} == {"email", "phone", "push_token", "webhook"}
    assert channels.by_address()["phone"].name == "sms"


def test_every_channel_declares_its_policy_backends_and_parts() -> None:
    for spec in channels.channels().values():
        assert spec.default_backend in spec.backends
        assert "outbox" in spec.backends, f"{spec.name}: the development backend"
        assert spec.required_parts
        assert spec.backend_variable == f"NOTIFY_{spec.name.upper()}_BACKEND"
        assert channels.default_policies()[spec.name] is spec.policy


def test_an_unknown_channel_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        channels.channel("fax")


# -- Recipient ------------------------------------------------------------------------


def test_a_recipient_reads_each_registered_address_kind() -> None:
    ada = Recipient(email="ada@example.com", webhook="https://hooks.example.com/in")
    assert ada.email == "ada@example.com"
    assert ada.webhook == "https://hooks.example.com/in"
    assert ada.phone is None
    assert ada.addresses == {"email": "ada@example.com", "webhook": "https://hooks.example.com/in"}
    assert ada == Recipient(webhook="https://hooks.example.com/in", email="ada@example.com")
    assert hash(ada) == hash(Recipient(webhook="https://hooks.example.com/in", email="ada@example.com"))
    assert repr(Recipient(email="ada@b.co", webhook="https://h.example/T0k3n")) == (
        "Recipient(email='a***@b.co', webhook='https://h.example/…')"
    )


def test_a_recipient_pickles_and_copies() -> None:
    ada = Recipient(email="ada@example.com", phone="+14155550100")
    assert pickle.loads(pickle.dumps(ada)) == ada
    assert copy.copy(ada) == ada and copy.deepcopy(ada) == ada
    assert dataclasses.asdict(notify.Intent("welcome", to=ada))["to"] == ada


def test_a_recipient_reads_a_kind_not_given_as_none_and_refuses_changes() -> None:
    ada = Recipient(email="ada@example.com")
    assert ada.fax_number is None  # no registry asked: send() refuses the kinds no channel has
    with pytest.raises(AttributeError):
        _ = ada._addresses_of_someone_else
    with pytest.raises(AttributeError, match="cannot be changed"):
        ada.email = "eve@example.com"


def test_send_names_the_address_kinds_it_knows() -> None:
    with notify.testing.capture(), pytest.raises(notify.ValidationError) as caught:
        notify.send("welcome", {"fax_number": "+1"}, data={"name": "Ada"})
    assert str(caught.value) == "to: unknown address kind 'fax_number' (email, phone, push_token, webhook)"


# -- a channel of another package ---------------------------------------------------------


def test_a_third_party_channel_goes_through_send_templates_policies_and_the_outbox(tmp_path: Path) -> None:
    site = plugin(tmp_path)
    (tmp_path / "notify.toml").write_text("[channels.fax]\nmax_attempts = 3\n")
    result = run(
        site,
        tmp_path,
        """
        import json
        import notify, notify.testing
        from notify import channels
        from notify.api import Notifier
        from notify.settings import Settings

        with notify.testing.capture() as outbox:
            to = {"fax_number": "+4930123", "email": "ada@example.com"}
            sent = notify.send("hello", to, data={"name": "Ada"})
            try:
                notify.send("hello", notify.Recipient(fax_number="+49"), data={"name": "x" * 200})
            except notify.TemplateError as exc:
                refused = str(exc)
        notifier = Notifier(Settings.from_env())
        print(json.dumps({
            "names": channels.names(),
            "channels": [d.channel for d in sent.deliveries],
            "faxes": [m.body for m in outbox.faxes],
            "of": len(outbox.of("fax")),
            "refused": refused,
            "policy": notifier.policies["fax"].max_attempts,
        }))
        """,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found == {
        "names": ["email", "sms", "push", "webhook", "fax"],
        "channels": ["email", "fax"],
        "faxes": ["Hello Ada, by fax."],
        "of": 1,
        "refused": "template: hello: the fax message is over a page",
        "policy": 3,
    }


def test_a_third_party_channel_gets_its_cli_options_and_outbox_files(tmp_path: Path) -> None:
    site = plugin(tmp_path)
    cli = ["-m", "notify.cli"]
    helped = run(site, tmp_path, "", *cli, "send", "--help")
    assert "--to-fax-number" in helped.stdout, helped.stdout + helped.stderr
    assert "--to-push-token" in helped.stdout
    preview = run(
        site,
        tmp_path,
        "",
        *cli,
        "templates",
        "preview",
        "hello",
        "--channel",
        "fax",
        "--data",
        '{"name": "Ada"}',
    )
    assert preview.returncode == 0, preview.stderr
    assert "Hello Ada, by fax." in preview.stdout
    worker_help = run(site, tmp_path, "", *cli, "worker", "--help")
    assert "fax" in worker_help.stdout
    delivered = run(
        site,
        tmp_path,
        """
        from notify.providers import load_provider
        from notify.settings import Settings
        from faxchannel import FaxMessage

        provider = load_provider("fax", Settings.from_env())
        print(provider.deliver(FaxMessage(delivery_id="d-1", to="+4930123", body="hi")).provider_id)
        """,
    )
    assert delivered.stdout.strip() == "outbox:fax/d-1.json", delivered.stderr
    assert json.loads((tmp_path / "home" / "outbox" / "fax" / "d-1.json").read_text()) == {
        "delivery_id": "d-1",
        "to": "+4930123",
        "body": "hi",
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("email = faxchannel:EMAIL", "a channel named 'email' is already registered"),
        ("fax = faxchannel:PHONE", "the sms channel already uses the address 'phone'"),
        ("fax = faxchannel:nothing", "does not import"),
        ("fax = faxchannel:NOT_A_SPEC", "is a str, not a notify.channels.ChannelSpec"),
        ("fax = faxchannel:SMS_FILES", "the sms channel already reads sms.txt.j2"),
    ],
)
def test_a_broken_third_party_channel_stops_the_process_with_a_reason(
    tmp_path: Path, entry: str, message: str
) -> None:
    site = plugin(tmp_path, entry)
    with (site / "faxchannel.py").open("a") as module:
        module.write(
            "import dataclasses\n"
            "EMAIL = dataclasses.replace(CHANNEL, name='email', address='email_again')\n"
            "PHONE = dataclasses.replace(CHANNEL, address='phone')\n"
            "NOT_A_SPEC = 'fax'\n"
            "SMS_FILES = dataclasses.replace(CHANNEL, parts={'body': 'sms.txt.j2'})\n"
        )
    result = run(site, tmp_path, "import notify.channels as c\nc.names()")
    assert result.returncode != 0
    assert "ConfigurationError" in result.stderr and message in result.stderr, result.stderr
    for command in (["templates", "list"], ["worker", "email"], ["send", "hello", "--to-email", "a@b.co"]):
        cli = run(site, tmp_path, "", "-m", "notify.cli", *command)
        assert cli.returncode == 2, cli.stderr
        assert cli.stderr.startswith("error: ") and cli.stderr.count("\n") == 1, cli.stderr
        assert message in cli.stderr
    attribute = run(
        site, tmp_path, "import notify\nprint(hasattr(notify.Recipient(email='a@b.co'), 'email'))"
    )
    assert attribute.stdout.strip() == "True", attribute.stderr  # a Recipient never asks the registry


def test_a_channel_check_that_raises_anything_is_still_a_validation_error(tmp_path: Path) -> None:
    site = plugin(tmp_path)
    with (site / "faxchannel.py").open("a") as module:
        module.write(
            "import dataclasses\n"
            "def bad_check(value, settings):\n"
            "    return str(int(value))\n"
            "CHANNEL = dataclasses.replace(CHANNEL, check_address=bad_check)\n"
        )
    result = run(
        site,
        tmp_path,
        """
        import notify, notify.testing
        with notify.testing.capture():
            try:
                notify.send("hello", {"fax_number": "not a number"}, data={"name": "Ada"})
            except notify.ValidationError as exc:
                print(exc)
        """,
    )
    assert result.stdout.strip().startswith(
        "to.fax_number: refused by the fax channel's check (ValueError: "
    ), result.stdout + result.stderr


def test_a_spec_is_checked_when_it_is_registered() -> None:
    spec = channels.channel("sms")
    for bad, reason in [
        ({"name": "Fax-1"}, "must be a lowercase identifier"),
        ({"address": "_x"}, "must be an identifier"),
        ({"default_backend": "nowhere"}, "needs a default backend"),
    ]:
        changed = ChannelSpec(**{**_init_fields(spec), **bad})
        with pytest.raises(ConfigurationError, match=reason):
            channels._check(changed, "test")


def _init_fields(spec: ChannelSpec) -> dict[str, Any]:
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.init}


def test_policies_of_unknown_channels_are_refused(tmp_path: Path) -> None:
    from notify.policy import load_policies

    path = tmp_path / "notify.toml"
    path.write_text("[channels.fax]\nmax_attempts = 3\n")
    with pytest.raises(ConfigurationError, match="unknown section 'fax'"):
        load_policies(path, channels.default_policies())
    assert load_policies(None, {"fax": ChannelPolicy(max_attempts=2)}) == {
        "fax": ChannelPolicy(max_attempts=2)
    }
