"""The operator console over HTTP, against a real `notify web` process: auth, CSRF, escaping, pages."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from notify.api import Notifier
from notify.cli.web import is_loopback
from notify.errors import ConfigurationError
from notify.models import Status
from notify.settings import Secret, Settings
from notify.web.console.guard import CSRF_LIFETIME, csrf_token, csrf_valid
from tests.support.console import AUTH, PASSWORD, REFUSED, SENT_TO, Site, open_site
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer
from tests.support.web import SECRET_KEY, Web, free_port, web_env

PAGES = ["/", "/deliveries?q=sent", "/dead-letters", "/templates", "/templates/welcome"]


@pytest.fixture
def site(
    env: dict[str, str],
    tmp_path: Path,
    smtp_server: SmtpServer,
    start_worker: Callable[..., Worker],
    notifier: Callable[[], Notifier],
) -> Iterator[Site]:
    site = open_site(env, tmp_path, smtp_server, start_worker, notifier)
    yield site
    site.web.stop()


def console_settings(**changes: object) -> Settings:
    """The settings the site's notify web has, as far as CSRF tokens go."""
    settings = Settings.from_env({"NOTIFY_SECRET_KEY": SECRET_KEY, "NOTIFY_WEB_PASSWORD": PASSWORD})
    return replace(settings, **changes)  # type: ignore[arg-type]


def replay(site: Site, token: str | None, delivery_id: str) -> requests.Response:
    form = {"action": "replay", "id": delivery_id}
    if token is not None:
        form["csrf"] = token
    return requests.post(site.console + "/dead-letters", data=form, auth=AUTH, timeout=60)


def a_token(site: Site) -> str:
    page = site.get("/dead-letters").text
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found[1]


def test_every_page_needs_the_password_and_a_wrong_one_gets_401(site: Site) -> None:
    wrong = [
        None,
        ("admin", "wrong"),
        ("root", PASSWORD),
        ("admin", PASSWORD + "x"),
    ]
    for path in PAGES:
        for auth in wrong:
            answer = requests.get(site.console + path, auth=auth, timeout=30)
            assert answer.status_code == 401, (path, auth)
            assert answer.headers["WWW-Authenticate"].startswith("Basic ")
            assert PASSWORD not in answer.text
        assert site.get(path).status_code == 200, path
    garbage = {"Authorization": "Basic !!not-base64"}
    assert requests.get(site.console + "/", headers=garbage, timeout=30).status_code == 401
    posted = requests.post(site.console + "/dead-letters", data={"action": "purge"}, timeout=30)
    assert posted.status_code == 401
    assert site.status(site.dead) is Status.FAILED


def test_healthz_and_unsubscribe_links_stay_without_auth(site: Site) -> None:
    assert requests.get(site.web.url + "/healthz", timeout=30).status_code == 200
    assert requests.get(site.web.url + "/u/not-a-token", timeout=30).status_code == 200


def test_console_pages_forbid_scripts_framing_and_caching(site: Site) -> None:
    for path in PAGES:
        headers = site.get(path).headers
        policy = headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy
        assert "frame-ancestors 'none'" in policy
        assert "script-src" not in policy  # default-src 'none' covers scripts: none run
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("kind", ["missing", "forged", "another key", "expired", "before a password change"])
def test_a_post_without_a_good_csrf_token_is_refused_and_changes_nothing(site: Site, kind: str) -> None:
    now = time.time()
    token = {
        "missing": None,
        "forged": f"{int(now)}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "another key": csrf_token(console_settings(secret_key=Secret("another-secret-key-" + "x" * 32)), now),
        "expired": csrf_token(console_settings(), now - CSRF_LIFETIME - 60),
        "before a password change": csrf_token(console_settings(web_password=Secret("old-password")), now),
    }[kind]

    answer = replay(site, token, site.dead)

    assert answer.status_code == 403
    assert "nothing was done" in answer.text
    assert site.status(site.dead) is Status.FAILED


def test_a_token_from_the_page_replays_and_a_worker_sends_it(site: Site) -> None:
    site.smtp.handler.rejected.pop(REFUSED)

    answer = replay(site, a_token(site), site.dead)

    assert answer.status_code == 200
    assert f"replayed {site.dead}" in answer.text
    wait_for(lambda: site.status(site.dead) is Status.SENT, what="the replayed email to be sent")


def test_a_replay_skips_a_suppressed_address_and_says_why(site: Site) -> None:
    site.producer.suppress("email", REFUSED)

    answer = replay(site, a_token(site), site.dead)

    assert f"left failed: {site.dead}&#39;s address is suppressed" in answer.text
    assert site.status(site.dead) is Status.FAILED


def test_purge_needs_its_box_ticked_and_then_deletes_every_dead_letter(site: Site) -> None:
    form = {"action": "purge", "csrf": a_token(site)}
    unticked = requests.post(site.console + "/dead-letters", data=form, auth=AUTH, timeout=30)
    assert unticked.status_code == 400
    assert site.status(site.dead) is Status.FAILED

    ticked = requests.post(
        site.console + "/dead-letters", data={**form, "confirm": "yes"}, auth=AUTH, timeout=30
    )

    assert ticked.status_code == 200
    assert "purged 2 dead letters" in ticked.text
    assert site.producer.store.get(site.dead) is None


def test_search_finds_by_notification_id_delivery_id_address_and_status(site: Site) -> None:
    delivery_id = site.sent.deliveries[0].id
    for q in [site.sent.id, delivery_id, SENT_TO.upper().replace("GRACE", "grace"), "sent", "SENT"]:
        page = site.get("/deliveries", params={"q": q}).text
        assert f'href="/console/deliveries/{delivery_id}"' in page, q
    assert site.dead not in site.get("/deliveries", params={"q": "sent"}).text
    assert "Nothing matches" in site.get("/deliveries", params={"q": "nobody@example.com"}).text
    assert site.get("/deliveries", params={"q": "x" * 5000}).status_code == 400


def test_a_delivery_shows_its_status_attempts_error_and_timeline(site: Site) -> None:
    page = site.get(f"/deliveries/{site.dead}").text

    assert "failed" in page
    assert REFUSED in page
    assert "554" in page and "refused by policy" in page
    assert "recorded" in page and "failed: 554" in page
    assert site.get("/deliveries/no-such-delivery").status_code == 404


def test_hostile_text_is_shown_escaped_on_every_page(site: Site) -> None:
    pages = [
        site.get(f"/deliveries/{site.hostile_failed}").text,
        site.get(f"/deliveries/{site.hostile_sent}").text,
        site.get("/dead-letters").text,
        site.get("/deliveries", params={"q": "failed"}).text,
    ]
    for page in pages:
        assert "<script>alert" not in page
        assert "<img src=x" not in page
        assert "\u202e" not in page and "\x00" not in page and "\x1b" not in page
    searched = site.get("/deliveries", params={"q": "<script>alert('q')</script>\u202e"}).text
    assert "<script>alert" not in searched
    assert "&lt;/script&gt;\\u202e</q>" in searched  # the search box keeps what was typed
    assert "&lt;script&gt;alert(&#39;reason&#39;)" in pages[0]
    assert "\\u202e" in pages[0] and "\\x00" in pages[0] and "\\x1b[2J" in pages[0]  # shown, not obeyed
    assert "&lt;img src=x onerror" in pages[1]
    assert "r" * 2500 not in pages[0] and "r" * 1000 in pages[0]  # a very long reason, cut short


@pytest.fixture
def site_on_postgresql(
    env: dict[str, str],
    tmp_path: Path,
    smtp_server: SmtpServer,
    start_worker: Callable[..., Worker],
    notifier: Callable[[], Notifier],
    postgres_url: str,
) -> Iterator[Site]:
    env["NOTIFY_DATABASE_URL"] = postgres_url
    site = open_site(env, tmp_path, smtp_server, start_worker, notifier)
    yield site
    site.web.stop()


def test_on_postgresql_a_nul_or_a_long_search_is_no_error(site_on_postgresql: Site) -> None:
    site = site_on_postgresql
    assert "Nothing matches" in site.get("/deliveries", params={"q": "abc\x00def"}).text
    assert site.get("/deliveries/abc%00def").status_code == 404
    assert site.get("/deliveries/" + "x" * 900).status_code == 404
    assert "Nothing matches" in site.get("/deliveries", params={"q": "y" * 900}).text
    delivery_id = site.sent.deliveries[0].id
    assert f'href="/console/deliveries/{delivery_id}"' in site.get("/deliveries", params={"q": SENT_TO}).text
    assert "&lt;script&gt;alert(&#39;reason&#39;)" in site.get(f"/deliveries/{site.hostile_failed}").text


def test_a_template_preview_renders_each_channel_and_locale_with_its_sample(site: Site) -> None:
    page = site.get("/templates/welcome").text

    for section in ["email-default", "sms-default", "push-default", "email-de", "sms-de", "push-de"]:
        assert f'id="{section}"' in page, section
    assert re.search(r'<iframe class="email" sandbox srcdoc="[^"]*Ada', page)
    assert "GSM-7: <strong>1 segment</strong>" in page
    assert "Willkommen" in page


def test_a_broken_template_shows_its_error_not_a_500(site: Site) -> None:
    listed = site.get("/templates")
    page = site.get("/templates/broken")

    assert listed.status_code == 200 and "broken" in listed.text
    assert page.status_code == 200
    assert "email.subject.j2:1" in page.text
    assert "sample.json does not exist" in page.text
    assert site.get("/templates/nope").status_code == 404
    assert site.get("/templates/..%2f..%2fetc").status_code == 404


def test_the_overview_shows_queue_depths_and_deliveries_per_status(site: Site) -> None:
    page = site.get("/").text

    assert "notify.email" in page
    assert re.search(r"<td>email</td>(<td class=\"num\">\d+</td>)+", page)
    assert 'href="/console/deliveries?q=failed"' in page


def test_the_overview_says_so_when_the_broker_does_not_answer(env: dict[str, str], tmp_path: Path) -> None:
    port = web_env(env)
    env["NOTIFY_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    web = Web(env, tmp_path / "web.log", port)
    try:
        answer = wait_for(lambda: _answer(web.url + "/console/"), what="the console to answer")

        assert answer is not None and answer.status_code == 200
        assert "the broker does not answer" in answer.text
    finally:
        web.stop()


def _answer(url: str) -> requests.Response | None:
    try:
        return requests.get(url, timeout=30)
    except requests.ConnectionError:
        return None


def test_without_a_password_the_console_is_open_on_loopback(env: dict[str, str], tmp_path: Path) -> None:
    web = Web(env, tmp_path / "web.log", web_env(env)).wait_ready()
    try:
        assert requests.get(web.url + "/console/", timeout=30).status_code == 200
    finally:
        web.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "example.com"])
def test_notify_web_refuses_an_address_beyond_loopback_without_a_password(
    env: dict[str, str], host: str
) -> None:
    web_env(env)
    done = subprocess.run(
        [sys.executable, "-m", "notify.cli", "web", "--host", host, "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "NOTIFY_WEB_PASSWORD" in line and host in line


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_is_127_0_0_0_8_and_1_and_localhost(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_basic_auth_compares_bytes_and_takes_a_password_with_a_colon(
    env: dict[str, str], tmp_path: Path
) -> None:
    env["NOTIFY_WEB_PASSWORD"] = "with:colon-é"
    web = Web(env, tmp_path / "web.log", web_env(env))
    try:
        web.wait_ready()
        token = base64.b64encode("admin:with:colon-é".encode()).decode()
        good = requests.get(web.url + "/console/", headers={"Authorization": f"Basic {token}"}, timeout=30)
        assert good.status_code == 200
        latin = base64.b64encode("admin:with:colon-é".encode("latin-1")).decode()
        bad = requests.get(web.url + "/console/", headers={"Authorization": f"Basic {latin}"}, timeout=30)
        assert bad.status_code == 401
    finally:
        web.stop()


@pytest.mark.parametrize(
    "token", ["", ".", "abc", "²³.x", "1.", "-5.abc", "9" * 13 + ".x", "1." + "A" * 200, "\uff11\uff12.x"]
)
def test_a_malformed_csrf_token_is_refused_without_an_error(token: str) -> None:
    assert csrf_valid(console_settings(), token) is False


def test_a_csrf_token_is_good_for_its_lifetime_and_needs_the_secret_key() -> None:
    settings, now = console_settings(), time.time()
    assert csrf_valid(settings, csrf_token(settings, now), now)
    assert csrf_valid(settings, csrf_token(settings, now - CSRF_LIFETIME + 5), now)
    assert not csrf_valid(settings, csrf_token(settings, now + 3600), now)  # from the future
    keyless = console_settings(secret_key=None)
    assert csrf_token(keyless, now) == ""
    assert not csrf_valid(keyless, csrf_token(settings, now), now)


def test_notify_web_names_a_notify_setting_nothing_reads_at_start(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = web_env(env)
    env["NOTIFY_WEB_PASWORD"] = "hunter2"  # misspelt: the console would stay open on loopback only
    web = Web(env, tmp_path / "web.log", port).wait_ready()
    try:
        said = web.output()
    finally:
        web.stop()
    assert "NOTIFY_WEB_PASWORD (did you mean NOTIFY_WEB_PASSWORD?)" in said
    assert "hunter2" not in said


@pytest.mark.parametrize("store_kind", ["sqlite", "postgresql"])
def test_a_delivery_retried_then_sent_shows_both_attempts_on_its_page_and_in_notify_status(
    env: dict[str, str],
    tmp_path: Path,
    smtp_server: SmtpServer,
    start_worker: Callable[..., Worker],
    notifier: Callable[[], Notifier],
    request: pytest.FixtureRequest,
    store_kind: str,
) -> None:
    """A real worker (threads) whose SMTP server refuses the first try with 451, then accepts."""
    import json

    from tests.test_cli import REPO, notify_cli

    if store_kind == "postgresql":
        env["NOTIFY_DATABASE_URL"] = str(request.getfixturevalue("postgres_url"))
    (tmp_path / "notify.toml").write_text('[channels.email]\nbackoff_initial = "200ms"\njitter = false\n')
    env["NOTIFY_CONFIG"] = str(tmp_path / "notify.toml")
    env["NOTIFY_WEB_PASSWORD"] = PASSWORD
    web = Web(env, tmp_path / "web.log", web_env(env))
    try:
        smtp_server.fail_next(1, "451 4.3.0 <b>Try</b> again later")
        start_worker("email", "-P", "threads", "-c", "2").wait_ready()
        producer = notifier()
        [delivery] = producer.send("welcome", {"email": SENT_TO}, data={"name": "G"}).deliveries
        wait_for(
            lambda: producer.store.get(delivery.id).status is Status.SENT,  # type: ignore[union-attr]
            what="the email, sent on its second try",
        )
        web.wait_ready()

        page = requests.get(f"{web.url}/console/deliveries/{delivery.id}", auth=AUTH, timeout=30).text
        rows = re.findall(r'<table class="attempts">(.*?)</table>', page, re.S)
        assert rows, page
        cells = [
            [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", rows[0], re.S)[1:]
        ]
        assert [c[:4] for c in cells] == [["1", "smtp", "retry", "451"], ["2", "smtp", "sent", ""]], cells
        assert cells[0][4] == "4.3.0 &lt;b&gt;Try&lt;/b&gt; again later"
        assert all(c[5] and c[6] and c[7].endswith(" s") for c in cells)  # started, ended, took
        assert "&lt;b&gt;Try&lt;/b&gt; again later" in rows[0] and "<b>Try" not in page
        assert "try 1 (smtp): retry: 451" in page and "try 2 (smtp): sent" in page  # the timeline

        shown = notify_cli(env, REPO, "status", delivery.id, "--json")
        assert shown.returncode == 0, shown.stderr
        [found] = json.loads(shown.stdout)
        history = [(a["number"], a["provider"], a["outcome"], a["code"]) for a in found["attempt_history"]]
        assert history == [(1, "smtp", "retry", "451"), (2, "smtp", "sent", None)]
        assert found["attempts"] == 2
        text = notify_cli(env, REPO, "status", delivery.id)
        assert text.returncode == 0, text.stderr
        assert "PROVIDER" in text.stdout and "retry" in text.stdout and "451" in text.stdout
    finally:
        web.stop()


def test_without_a_password_the_console_answers_only_to_a_loopback_host(
    env: dict[str, str], tmp_path: Path
) -> None:
    """DNS rebinding: a page of another site whose name now points here is same-origin to the
    browser; its Host header still names that site, and is refused. Forms from elsewhere too."""
    port = web_env(env)
    web = Web(env, tmp_path / "web.log", port).wait_ready()
    try:
        page = web.url + "/console/dead-letters"
        assert requests.get(page, timeout=30).status_code == 200
        assert requests.get(page, headers={"Host": f"localhost:{port}"}, timeout=30).status_code == 200
        rebound = requests.get(page, headers={"Host": "rebind.attacker.example"}, timeout=30)
        assert rebound.status_code == 403 and "loopback Host" in rebound.text
        form = {
            "csrf": csrf_token(Settings.from_env({"NOTIFY_SECRET_KEY": SECRET_KEY})),
            "action": "replay-all",
        }
        for headers in ({"Origin": "http://attacker.example"}, {"Sec-Fetch-Site": "cross-site"}):
            posted = requests.post(page, data=form, headers=headers, timeout=30, allow_redirects=False)
            assert posted.status_code == 403, headers
        ours = requests.post(page, data=form, headers={"Origin": web.url}, timeout=30, allow_redirects=False)
        assert ours.status_code in (200, 303), ours.text
    finally:
        web.stop()


def test_a_console_password_shorter_than_12_characters_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="NOTIFY_WEB_PASSWORD must be at least 12 characters"):
        Settings.from_env({"NOTIFY_WEB_PASSWORD": "hunter2"})


def test_a_broker_that_takes_the_connection_and_never_answers_holds_no_page_or_probe(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Before: /healthz, /metrics and /console/ never answered (each holding a thread of the pool
    that receipts and unsubscribe share). Now each gives up on the broker and says so."""
    import socket
    import threading

    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.extend(iter(lambda: silent.accept()[0], None)), daemon=True).start()
    port = web_env(env)
    env["NOTIFY_BROKER_URL"] = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
    web = Web(env, tmp_path / "web.log", port)
    try:
        wait_for(lambda: _answers(web.url + "/healthz") == 503, what="/healthz to say the broker is away")
        assert requests.get(web.url + "/healthz", timeout=30).json()["broker"] == "unavailable"
        metrics = requests.get(web.url + "/metrics", timeout=30)
        assert metrics.status_code == 200 and "notify_broker_up 0.0" in metrics.text
        page = requests.get(web.url + "/console/", timeout=30)
        assert page.status_code == 200 and "the broker does not answer" in page.text
    finally:
        web.stop()
        silent.close()


def _answers(url: str) -> int | None:
    try:
        return requests.get(url, timeout=30).status_code
    except requests.ConnectionError:
        return None
