"""Template categories and one-click unsubscribe (RFC 8058), through real workers, real SMTP and a
real `notify web` process, with a plain HTTP client (no cookies, no login).

The repo's `newsletter` template is `category = "marketing"`, `unsubscribe = true`; `welcome` is
transactional. An unsubscribe stops its category only; a GET never unsubscribes; a bad token gets
the answer a good one gets, and changes nothing.
"""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from notify.api import Intent, Notifier
from notify.errors import ConfigurationError, TemplateError
from notify.models import Status, SuppressionReason
from notify.rendering import Renderer, TemplateConfig, check_template, parse_config
from notify.settings import Settings
from notify.unsubscribe import Target, read_token, token, unsubscribe_url
from tests.conftest import REPO
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer
from tests.support.web import SECRET_KEY, Web, web_env
from tests.test_cli import notify_cli
from tests.test_send_validation import count_rows

NEWS = {"name": "Ada", "title": "News", "summary": "Three new features."}
ADA = "ada@example.com"


@pytest.fixture(params=["sqlite", "postgresql"])
def on_store(request: pytest.FixtureRequest, env: dict[str, str]) -> dict[str, str]:
    if request.param == "postgresql":
        env["NOTIFY_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return env


@pytest.fixture
def web(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[], Web]]:
    started: list[Web] = []
    port = web_env(env)

    def start() -> Web:
        started.append(Web(env, tmp_path / f"web-{len(started)}.log", port))
        return started[-1].wait_ready()

    yield start
    for process in started:
        process.stop()


def status(producer: Notifier, delivery_id: str) -> Status:
    found = producer.store.get(delivery_id)
    assert found is not None
    return found.status


def settings(**variables: str) -> Settings:
    return Settings.from_env({"NOTIFY_SECRET_KEY": SECRET_KEY, **variables})


# -- template.toml ------------------------------------------------------------------------


def test_a_template_is_transactional_unless_its_template_toml_names_a_category() -> None:
    renderer = Renderer(REPO / "templates")
    assert renderer.config("welcome") == TemplateConfig(category=None, unsubscribe=False)
    assert renderer.config("newsletter") == TemplateConfig(category="marketing", unsubscribe=True)
    assert parse_config('category = "digest"', "x") == TemplateConfig(category="digest")
    assert parse_config('category = "transactional"', "x") == TemplateConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("category = ", "not TOML"),
        ('categroy = "marketing"', "unknown key 'categroy'"),
        ('category = "Marketing!"', "category must be lowercase"),
        ("category = 3", "category must be lowercase"),
        (f'category = "{"x" * 65}"', "category must be lowercase"),
        ('category = "m"\nunsubscribe = "yes"', "unsubscribe must be true or false"),
        ("unsubscribe = true", "unsubscribe = true needs a category"),
    ],
)
def test_a_bad_template_toml_is_refused_by_send_and_by_templates_check(
    text: str, message: str, env: dict[str, str], tmp_path: Path, notifier: Callable[[], Notifier]
) -> None:
    root = tmp_path / "templates"
    shutil.copytree(REPO / "templates", root)
    (root / "welcome" / "template.toml").write_text(text)
    env["NOTIFY_TEMPLATES_DIR"] = str(root)

    with pytest.raises(TemplateError, match=re.escape(message)) as refused:
        notifier().send("welcome", {"email": ADA}, data={"name": "Ada"})
    checked = notify_cli(env, tmp_path, "templates", "check")

    assert refused.value.field == "template" and "welcome/template.toml" in str(refused.value)
    assert count_rows(Path(env["NOTIFY_HOME"]) / "notify.db", "notify_deliveries") == 0
    assert count_rows(Path(env["NOTIFY_HOME"]) / "broker.db", "kombu_message") == 0
    assert checked.returncode == 1 and "welcome/template.toml" in checked.stderr
    assert check_template(Renderer(root), "welcome") != []


def test_an_unsubscribe_template_needs_the_public_url_and_the_secret_key(
    env: dict[str, str], notifier: Callable[[], Notifier]
) -> None:
    with pytest.raises(ConfigurationError, match="set NOTIFY_PUBLIC_URL and NOTIFY_SECRET_KEY"):
        notifier().send("newsletter", {"email": ADA}, data=NEWS)
    env["NOTIFY_SECRET_KEY"] = SECRET_KEY
    with pytest.raises(ConfigurationError, match="set NOTIFY_PUBLIC_URL "):
        notifier().send("newsletter", {"email": ADA}, data=NEWS)

    assert count_rows(Path(env["NOTIFY_HOME"]) / "notify.db", "notify_deliveries") == 0
    assert count_rows(Path(env["NOTIFY_HOME"]) / "broker.db", "kombu_message") == 0


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("NOTIFY_SECRET_KEY", "short", "at least 32 characters"),
        ("NOTIFY_PUBLIC_URL", "ftp://notify.example.com", "must start with one of http://, https://"),
        ("NOTIFY_PUBLIC_URL", "https://notify.example.com/?next=1", "must be a base URL"),
        ("NOTIFY_PUBLIC_URL", "https://user:pw@notify.example.com", "must be a base URL"),
        # each would have made every unsubscribe email fail at its worker (List-Unsubscribe refuses it)
        ("NOTIFY_PUBLIC_URL", "https://bücher.example", "printable ASCII"),
        ("NOTIFY_PUBLIC_URL", "https://n.example.com/a b", "printable ASCII"),
        ("NOTIFY_PUBLIC_URL", "https://n.example.com/<x>", "printable ASCII"),
        ("NOTIFY_ON_STATUS", "not a hook", "must be 'module:function'"),
    ],
)
def test_bad_settings_are_refused_naming_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as refused:
        Settings.from_env({variable: value})
    assert variable in str(refused.value)
    assert value not in str(refused.value) or variable == "NOTIFY_ON_STATUS"  # a URL may carry a password


# -- tokens -------------------------------------------------------------------------------


def test_a_token_reads_back_as_what_it_unsubscribes_and_only_with_its_key() -> None:
    made = token(settings(), "email", ADA, "marketing")

    assert read_token(settings(), made) == Target("email", ADA, "marketing")
    assert read_token(settings(NOTIFY_SECRET_KEY="another-key-" + "x" * 32), made) is None
    assert token(settings(), "email", "grace@example.com", "marketing") != made


def test_a_forged_or_truncated_token_reads_as_nothing() -> None:
    made = token(settings(), "email", ADA, "marketing")
    version, payload, mac = made.split(".")
    other = base64.urlsafe_b64encode(b'["email","grace@example.com","marketing"]').rstrip(b"=").decode()
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    forged = [
        f"{version}.{other}.{mac}",  # another address under this mac
        f"{version}.{payload}.{flipped}",
        f"2.{payload}.{mac}",
        f"{version}.{payload}.{mac}=",
        f"{version}.{payload}.",
        f"{version}.{payload}",
        "",
        "1..",
        "x" * 5000,
        "1.é.é",
        made + ".",
        " " + made,
        f"{version}.{payload}+.{mac}",
    ]
    truncated = [made[:n] for n in range(len(made))]

    assert [f for f in forged + truncated if read_token(settings(), f) is not None] == []


def test_the_link_is_the_public_url_and_the_token() -> None:
    link = unsubscribe_url(settings(NOTIFY_PUBLIC_URL="https://n.example.com/"), "email", ADA, "marketing")
    assert link.startswith("https://n.example.com/u/1.")
    assert read_token(settings(), link.rpartition("/")[2]) == Target("email", ADA, "marketing")


# -- the category at send ------------------------------------------------------------------


def test_an_unsubscribe_stops_its_category_only(
    on_store: dict[str, str], notifier: Callable[[], Notifier]
) -> None:
    web_env(on_store)
    producer = notifier()
    address = f"ada-{id(producer)}@example.com"
    producer.store.suppress("email", address, "unsubscribed", category="marketing")

    news = producer.send("newsletter", {"email": address}, data=NEWS)
    welcome = producer.send("welcome", {"email": address}, data={"name": "Ada"})
    many = producer.send_many(
        [
            Intent("newsletter", {"email": address}, data=NEWS),
            Intent("welcome", {"email": address}, data={"name": "A"}),
        ]
    )

    assert news.deliveries[0].status == Status.SUPPRESSED
    assert welcome.deliveries[0].status == Status.QUEUED
    assert [r.deliveries[0].status for r in many] == [Status.SUPPRESSED, Status.QUEUED]
    [entry] = [s for s in producer.suppressions() if s.address == address]
    assert (entry.category, entry.reason) == ("marketing", SuppressionReason.UNSUBSCRIBED)


# -- through real workers, SMTP and notify web ----------------------------------------------


def the_link(smtp_server: SmtpServer, address: str) -> str:
    [message] = [m for m in smtp_server.messages if m["To"] == address]
    header = str(message["List-Unsubscribe"])
    assert re.fullmatch(r"<https?://[^<>\s]+>", header), header
    assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    return header[1:-1]


def test_a_marketing_email_carries_a_one_click_link_that_a_post_alone_uses(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
    web: Callable[[], Web],
) -> None:
    start_worker("email").wait_ready()
    server = web()
    producer = notifier()

    first = producer.send("newsletter", {"email": ADA}, data=NEWS).deliveries[0]
    wait_for(lambda: producer.store.get(first.id).status == Status.SENT, what="the newsletter sent")  # type: ignore[union-attr]
    link = the_link(smtp_server, ADA)
    [message] = smtp_server.messages
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]

    assert link.startswith(server.url + "/u/")
    assert link in text  # the body's link is the header's
    assert [m for m in smtp_server.messages if m["List-Unsubscribe"] is None] == []

    # A mail scanner follows the link: a page with a button, and nothing changes.
    page = requests.get(link, timeout=10)
    assert page.status_code == 200 and "<button" in page.text and 'method="post"' in page.text
    assert page.headers["Referrer-Policy"] == "no-referrer" and not page.cookies
    assert producer.suppressions() == []

    # The mail client's one-click POST, as RFC 8058 has it: no cookie, no login.
    done = requests.post(link, data={"List-Unsubscribe": "One-Click"}, timeout=10)
    assert done.status_code == 200 and not done.cookies
    [entry] = producer.suppressions()
    assert (entry.channel, entry.address, entry.category, entry.reason) == (
        "email",
        ADA,
        "marketing",
        SuppressionReason.UNSUBSCRIBED,
    )

    # Marketing stops; transactional mail goes on, through the same worker.
    again = producer.send("newsletter", {"email": ADA}, data=NEWS).deliveries[0]
    welcome = producer.send("welcome", {"email": ADA}, data={"name": "Ada"}).deliveries[0]
    assert again.status == Status.SUPPRESSED
    wait_for(lambda: producer.store.get(welcome.id).status == Status.SENT, what="the welcome sent")  # type: ignore[union-attr]
    assert [m["Subject"] for m in smtp_server.messages] == ["News", "Welcome, Ada!"]
    assert smtp_server.messages[1]["List-Unsubscribe"] is None  # transactional: no link

    # A second POST (a client's retry) changes nothing and answers the same.
    assert requests.post(link, data={"List-Unsubscribe": "One-Click"}, timeout=10).text == done.text
    assert len(producer.suppressions()) == 1


def test_a_bad_token_gets_the_answer_a_good_one_gets_and_changes_nothing(
    env: dict[str, str], notifier: Callable[[], Notifier], web: Callable[[], Web]
) -> None:
    server = web()
    producer = notifier()
    good = token(Settings.from_env(env), "email", ADA, "marketing")
    forged = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    one_click = {"List-Unsubscribe": "One-Click"}

    answers = {
        name: requests.post(f"{server.url}/u/{value}", data=one_click, timeout=10)
        for name, value in {"forged": forged, "truncated": good[:-5], "garbage": "x" * 300}.items()
    }
    pages = {requests.get(f"{server.url}/u/{value}", timeout=10).text for value in (forged, good)}

    assert {(a.status_code, a.text) for a in answers.values()} == {(200, answers["forged"].text)}
    assert producer.suppressions() == []
    assert len({p.replace(forged, "T").replace(good, "T") for p in pages}) == 1  # same page for both
    assert requests.post(f"{server.url}/u/{good}", data=one_click, timeout=10).text == answers["forged"].text
    assert len(producer.suppressions()) == 1


def test_bad_requests_get_a_4xx_and_change_nothing(
    env: dict[str, str], notifier: Callable[[], Notifier], web: Callable[[], Web]
) -> None:
    server = web()
    producer = notifier()
    link = f"{server.url}/u/" + token(Settings.from_env(env), "email", ADA, "marketing")

    answers = [
        requests.post(link, timeout=10),  # no body
        requests.post(link, data={"List-Unsubscribe": "Yes"}, timeout=10),
        requests.post(
            link, data=b"\xff\xfe", headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10
        ),
        requests.post(
            link,
            data=b"x" * 70_000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=10,
        ),
        requests.post(link, json={"List-Unsubscribe": "One-Click"}, timeout=10),
        requests.put(link, data={"List-Unsubscribe": "One-Click"}, timeout=10),
        requests.get(f"{server.url}/nowhere", timeout=10),
    ]

    assert [a.status_code for a in answers] == [400, 400, 400, 413, 415, 405, 404]
    assert producer.suppressions() == []
    assert all("Traceback" not in a.text and SECRET_KEY not in a.text for a in answers)
    # multipart/form-data, which RFC 8058 allows, is read too
    files = {"List-Unsubscribe": (None, "One-Click")}
    assert requests.post(link, files=files, timeout=10).status_code == 200
    assert [s.category for s in producer.suppressions()] == ["marketing"]


def test_a_delivery_queued_before_its_unsubscribe_is_not_sent(
    env: dict[str, str],
    notifier: Callable[[], Notifier],
    start_worker: Callable[..., Worker],
    smtp_server: SmtpServer,
) -> None:
    web_env(env)
    producer = notifier()
    queued = producer.send("newsletter", {"email": ADA}, data=NEWS).deliveries[0]
    welcome = producer.send("welcome", {"email": ADA}, data={"name": "Ada"}).deliveries[0]
    producer.store.suppress("email", ADA, "unsubscribed", category="marketing")

    start_worker("email").wait_ready()

    wait_for(lambda: status(producer, queued.id) == Status.SUPPRESSED, what="the newsletter suppressed")
    wait_for(lambda: producer.store.get(welcome.id).status == Status.SENT, what="the welcome sent")  # type: ignore[union-attr]
    assert [m["Subject"] for m in smtp_server.messages] == ["Welcome, Ada!"]
    assert producer.store.get(queued.id).attempts == 0  # type: ignore[union-attr]


def test_notify_web_refuses_to_start_without_its_secret_key_or_on_an_older_schema(
    env: dict[str, str], tmp_path: Path, notifier: Callable[[], Notifier]
) -> None:
    without = notify_cli(env, tmp_path, "web", "--port", "1")
    assert without.returncode == 2
    assert without.stderr.strip().splitlines() == [
        "error: notify web needs NOTIFY_SECRET_KEY (it checks the unsubscribe links it signed)"
    ]

    web_env(env)
    store = notifier().store
    store.schema_revision()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE notify_schema_version SET version_num = '0003'")
    older = notify_cli(env, tmp_path, "web", "--port", "1")
    assert older.returncode == 2 and "notify db upgrade" in older.stderr
    assert len(older.stderr.strip().splitlines()) == 1


def test_an_operator_can_unsubscribe_an_address_from_one_category_by_hand(
    env: dict[str, str], tmp_path: Path, notifier: Callable[[], Notifier]
) -> None:
    web_env(env)
    added = notify_cli(
        env,
        tmp_path,
        "suppressions",
        "add",
        "email",
        ADA,
        "--reason",
        "unsubscribed",
        "--category",
        "marketing",
    )
    refused = [
        notify_cli(env, tmp_path, "suppressions", "add", "email", ADA, "--category", bad)
        for bad in ("Marketing!", "transactional", "")
    ]
    producer = notifier()

    assert added.returncode == 0, added.stderr
    assert [(r.returncode, r.stderr.count("\n")) for r in refused] == [(2, 1)] * 3
    assert all("is not a template category" in r.stderr for r in refused)
    assert [(s.category, s.reason.value) for s in producer.suppressions()] == [("marketing", "unsubscribed")]
    assert producer.send("newsletter", {"email": ADA}, data=NEWS).deliveries[0].status == Status.SUPPRESSED
    assert producer.send("welcome", {"email": ADA}, data={"name": "A"}).deliveries[0].status == Status.QUEUED


def test_healthz_says_503_and_which_part_does_not_answer(env: dict[str, str], tmp_path: Path) -> None:
    from tests.support.web import free_port

    port = web_env(env)
    env["NOTIFY_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    server = Web(env, tmp_path / "web.log", port)
    try:

        def answer() -> list[requests.Response]:  # a list: a 503 Response is falsy
            assert server.process.poll() is None, server.output()
            try:
                return [requests.get(server.url + "/healthz", timeout=10)]
            except requests.ConnectionError:
                return []

        [first] = wait_for(answer, what="notify web to answer")
        second = requests.get(server.url + "/healthz", timeout=10)  # the app kept from the first ask
    finally:
        server.stop()

    assert [(r.status_code, r.json()) for r in (first, second)] == [
        (503, {"store": "ok", "broker": "unavailable"})
    ] * 2
