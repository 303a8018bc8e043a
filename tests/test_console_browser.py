"""The operator console in a real browser (Playwright driving Debian's chromium) over a real `notify web`.

Set NOTIFY_SCREENSHOTS_DIR to keep a screenshot of each page there. Without
/usr/bin/chromium these tests skip on a laptop and fail in CI (`apt-get install chromium`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from notify.api import Notifier
from notify.models import Status
from tests.conftest import IN_CI
from tests.support.console import AUTH, PASSWORD, REFUSED, SENT_TO, Site, open_site
from tests.support.processes import Worker, wait_for
from tests.support.smtp import SmtpServer

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not CHROMIUM.exists():
    message = f"{CHROMIUM} is missing: apt-get install chromium"
    if IN_CI:
        pytest.fail(message + "; CI must install it (.ci/run)", pytrace=False)
    pytest.skip(message, allow_module_level=True)

from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright  # noqa: E402
from playwright.sync_api import Error as PlaywrightError  # noqa: E402


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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(
        http_credentials={"username": AUTH[0], "password": AUTH[1]}, viewport={"width": 1280, "height": 800}
    )
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    yield page
    context.close()
    assert dialogs == [], "a script ran on a console page"


def screenshot(page: Page, name: str) -> None:
    """Keep what the page looks like when NOTIFY_SCREENSHOTS_DIR names a folder."""
    folder = os.environ.get("NOTIFY_SCREENSHOTS_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def test_an_operator_searches_by_each_key_and_opens_a_delivery(site: Site, page: Page) -> None:
    page.goto(site.console + "/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator("td", has_text="notify.email").first).to_be_visible()
    screenshot(page, "console-home.png")
    delivery_id = site.sent.deliveries[0].id

    for q in [site.sent.id, delivery_id, SENT_TO.replace("example.com", "EXAMPLE.com"), "sent"]:
        page.goto(site.console + "/deliveries")
        page.get_by_placeholder("notification id, delivery id, address or status").fill(q)
        page.get_by_role("button", name="Search").click()
        expect(page.get_by_role("link", name=delivery_id)).to_be_visible()
    page.goto(site.console + "/deliveries?q=failed")
    screenshot(page, "deliveries-search.png")

    page.goto(site.console + f"/deliveries?q={delivery_id}")
    page.get_by_role("link", name=delivery_id).click()

    expect(page.get_by_role("heading", name=f"Delivery {delivery_id}")).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text(SENT_TO)
    expect(page.locator("dl.facts")).to_contain_text("sent")
    expect(page.locator("table").first).to_contain_text("recorded")
    page.goto(site.console + f"/deliveries/{site.dead}")
    expect(page.locator("dl.facts")).to_contain_text("554")
    screenshot(page, "delivery.png")
    page.get_by_role("button", name="Replay").click()  # the address is still refused: it fails again
    expect(page.locator(".done")).to_contain_text(f"replayed {site.dead}")
    wait_for(lambda: site.status(site.dead) is Status.FAILED, what="the replayed email to fail again")


def test_an_operator_replays_a_dead_letter_and_a_worker_sends_it(site: Site, page: Page) -> None:
    page.goto(site.console + "/dead-letters")
    row = page.locator("tr", has_text=site.dead)
    expect(row).to_contain_text("refused by policy")
    screenshot(page, "dead-letters.png")
    site.smtp.handler.rejected.pop(REFUSED)  # the provider takes it now

    row.get_by_role("button", name="Replay").click()

    expect(page.locator(".done")).to_contain_text(f"replayed {site.dead}")
    wait_for(lambda: site.status(site.dead) is Status.SENT, what="the replayed email to be sent")
    page.goto(site.console + f"/deliveries/{site.dead}")
    expect(page.locator("dl.facts")).to_contain_text("sent")
    tries = page.locator("table.attempts tr")  # the refused try kept, the replay's numbered on: 2
    expect(tries).to_have_count(3)
    expect(tries.nth(1)).to_contain_text("554")
    expect(tries.nth(2)).to_contain_text("sent")


def test_a_hostile_delivery_renders_harmlessly(site: Site, page: Page) -> None:
    for delivery_id in (site.hostile_failed, site.hostile_sent):
        page.goto(site.console + f"/deliveries/{delivery_id}")
        expect(page.locator("dl.facts")).to_contain_text("<script>alert(")
        assert page.locator("main script, main img").count() == 0
    page.goto(site.console + "/dead-letters")
    expect(page.locator("tr", has_text=site.hostile_failed)).to_contain_text("\\u202e")


def test_a_template_preview_shows_email_in_a_sandboxed_frame_sms_segments_and_push(
    site: Site, page: Page
) -> None:
    page.goto(site.console + "/templates")
    page.get_by_role("link", name="order_shipped").click()

    frame = page.locator("#email-default iframe")
    expect(frame).to_have_attribute("sandbox", "")
    assert page.frame_locator("#email-default iframe").locator("body").inner_text().count("Ada") == 1
    expect(page.locator("#sms-default .segments")).to_contain_text("GSM-7: 1 segment")
    expect(page.locator("#push-default .phone")).to_contain_text("Order A-1042 shipped")
    screenshot(page, "template.png")

    page.goto(site.console + "/templates/broken")
    expect(page.locator(".error").first).to_contain_text("email.subject.j2:1")


def test_a_script_in_an_email_preview_never_runs(site: Site, page: Page, tmp_path: Path) -> None:
    root = Path(site.web.log.parent / "templates")
    (root / "scripted").mkdir()
    (root / "scripted" / "email.subject.j2").write_text("Hi")
    (root / "scripted" / "email.txt.j2").write_text("Hi")
    (root / "scripted" / "email.html.j2").write_text(
        '<p id="p">static</p><script>alert("ran"); document.getElementById("p").textContent = "ran"</script>'
    )

    page.goto(site.console + "/templates/scripted")

    body = page.frame_locator("#email-default iframe").locator("#p")
    expect(body).to_have_text("static")


def refused_statuses(context: BrowserContext, url: str) -> set[int]:
    """The statuses chromium saw opening `url`; its navigation may end in an auth error instead of
    the 401 page (it gives up on credentials that fail), which is refusal too."""
    page = context.new_page()
    statuses: list[int] = []
    page.on("response", lambda response: statuses.append(response.status))
    try:
        page.goto(url)
    except PlaywrightError as exc:
        assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc), exc
    return set(statuses)


def test_the_console_refuses_a_browser_without_the_password_or_with_a_wrong_one(
    site: Site, browser: Browser
) -> None:
    anonymous = browser.new_context()
    wrong = browser.new_context(http_credentials={"username": "admin", "password": PASSWORD + "-wrong"})
    try:
        assert refused_statuses(anonymous, site.console + "/dead-letters") == {401}
        assert refused_statuses(wrong, site.console + "/dead-letters") == {401}
        # The answer itself, shown as a page: fetched outside chromium's auth prompt.
        page = anonymous.new_page()
        page.route("**/*", lambda route: route.fulfill(response=route.fetch()))
        answer = page.goto(site.console + "/dead-letters")
        assert answer is not None and answer.status == 401
        expect(page.locator("body")).to_contain_text("authentication required")
        screenshot(page, "unauthorized.png")
    finally:
        anonymous.close()
        wrong.close()


def test_a_form_posted_from_another_page_without_the_token_changes_nothing(site: Site, page: Page) -> None:
    page.goto(site.console + "/dead-letters")
    page.evaluate(  # a forged form, as another site would build it: no token, or a made-up one
        "() => { document.querySelector('form [name=csrf]').value = '1.forged'; }"
    )
    page.get_by_role("button", name="Replay all").click()

    expect(page.get_by_role("heading", name="Refused")).to_be_visible()
    assert site.status(site.dead) is Status.FAILED
    answer = requests.post(
        site.console + "/dead-letters", data={"action": "replay-all"}, auth=AUTH, timeout=30
    )
    assert answer.status_code == 403
    assert site.status(site.dead) is Status.FAILED
