"""The admin console in a real browser (Playwright driving Debian's Chromium) against a real
``smeg run``: an operator logs in with a token, sees a failure group, retries it after a
confirmation showing the dry-run count, watches the message turn delivered, pauses and resumes
delivery; a viewer sees but cannot act (403); no session means the login page; a POST without the
session's CSRF token — from the console's own page or from another origin — is refused (403).

Screenshots of every page are taken on the way: into ``SMEG_TEST_CONSOLE_SHOTS`` when set (the
README's ``docs/console``), else into the test's temporary directory.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and the ``playwright`` package;
Playwright's own browser download is not used.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pika
import pytest

from adapters.alert_store import AlertStore
from adapters.event_store import MessageStore
from domain.alert import AlertRule, Observation
from domain.message import DELIVERED, FAILED, Message
from smeg_actors.admin.api import create_app
from smeg_actors.admin.auth import tokens_from
from smeg_actors.admin.console import Console
from smeg_actors.runtime.config import Settings, SettingsError
from tests.e2e.conftest import AMQP_URL, publish_requests, smeg_env
from tests.e2e.faulty_provider import OK, REFUSING, FaultyProvider
from tests.e2e.test_admin_api import SECRETS, TOKENS, free_port
from tests.e2e.test_cli import opened, seed_failed
from tests.e2e.test_run_processes import consumers, logged
from tests.waiting import wait_until

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = "/usr/bin/chromium"
ADDRESS = "+447700900123"  # publish_requests' recipient
SECONDS = 1000  # Playwright's timeouts are in milliseconds


def _missing(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _missing(f"playwright is not installed (pip install playwright): {exc}")
    if not Path(CHROMIUM).exists():
        _missing(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("SMEG_TEST_CONSOLE_SHOTS") or tmp_path / "shots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class Deployment:
    """``smeg run`` with the admin tokens on a port of its own, delivering through ``provider``."""

    def __init__(self, tmp_path: Path, prefix: str, start_smeg: Any) -> None:
        self.provider = FaultyProvider()
        self.provider.mode = REFUSING
        self.port, self.prefix = free_port(), prefix
        self.url = f"sqlite:///{tmp_path}/smeg.db"
        config = tmp_path / "smeg.toml"
        config.write_text(f'[providers.gateway]\ntype = "http"\nurl = "{self.provider.url}"\n')
        env = smeg_env(
            SMEG_CONFIG=str(config),
            SMEG_DEFAULT_PROVIDER="gateway",
            SMEG_DATABASE_URL=self.url,
            SMEG_QUEUE_PREFIX=prefix,
            SMEG_HTTP_PORT=str(self.port),
            SMEG_ADMIN_TOKENS=TOKENS,
        )
        self.env = env
        self.smeg = start_smeg(env, "run")
        wait_until(lambda: logged(self.smeg, "runtime_started") or self.smeg.assert_running(), 60)

    def page(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/console{path}"

    def status(self, message_id: str) -> str | None:
        store = MessageStore(self.url)
        try:
            return store.get_by_message_id(message_id).status
        except Exception:
            return None
        finally:
            store.close()

    def history(self, message_id: str) -> list[Any]:
        store = MessageStore(self.url)
        try:
            return list(store.history(Message.create_id(message_id)))
        finally:
            store.close()

    def stop(self) -> None:
        self.smeg.process.send_signal(signal.SIGTERM)
        assert self.smeg.wait(timeout=60) == 0
        self.provider.close()


@pytest.fixture
def deployment(tmp_path: Path, e2e_prefix: str, start_smeg: Any) -> Iterator[Deployment]:
    running = Deployment(tmp_path, e2e_prefix, start_smeg)
    yield running
    running.stop()


def failed(deployment: Deployment, ids: list[str]) -> None:
    """Publish ``ids`` to the refusing provider and wait until each has failed for good."""
    publish_requests(deployment.prefix, ids)
    wait_until(lambda: all(deployment.status(m) == FAILED for m in ids), 60, 0.2, message="all failed")


def log_in(page: Page, deployment: Deployment, who: str, path: str = "/") -> None:
    page.goto(deployment.page(path))
    assert "/console/login" in page.url  # no session: the login form first
    page.fill("input[name=token]", SECRETS[who])
    page.click("button:has-text('Log in')")
    assert page.url == deployment.page(path)  # back where it was going


def reload_until(
    page: Page, url: str, selector: str, text: str, timeout: float = 60, unless: Any = lambda: False
) -> None:
    """Load ``url`` until its ``selector`` holds ``text`` (a read model catching up), or ``unless()``."""

    def shown() -> bool:
        page.goto(url)
        found = page.locator(selector)
        return (found.count() > 0 and text in found.first.inner_text()) or unless()

    wait_until(shown, timeout, 0.5, message=lambda: f"{url}: {selector} without {text!r}")


def csrf_of(page: Page) -> str:
    value = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert value
    return value


def post_from(page: Page, path: str, form: dict[str, str], header: str | None = None) -> int:
    """A POST the page's own script makes (same origin, its cookie sent): the status answered."""
    script = """async ([path, form, header]) => {
        const headers = header ? {"X-CSRF-Token": header} : {};
        const answer = await fetch(path, {method: "POST", body: new URLSearchParams(form), headers});
        return answer.status;
    }"""
    status: int = page.evaluate(script, [path, form, header])
    return status


def queued(prefix: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        count: int = connection.channel().queue_declare(f"{prefix}.send", passive=True).method.message_count
        return count
    finally:
        connection.close()


def test_an_operator_retries_a_failure_group_watches_it_delivered_then_pauses_and_resumes_delivery(
    deployment: Deployment, browser: Browser, shots: Path
) -> None:
    # Given three messages the provider refused
    ids = ["order-1041-shipped", "order-1042-shipped", "order-1043-shipped"]
    failed(deployment, ids)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []  # a script or style the page's Content-Security-Policy refused, say
    page.on("console", lambda line: errors.append(line.text) if line.type == "error" else None)
    page.goto(deployment.page("/failures"))
    page.screenshot(path=shots / "login.png", full_page=True)

    # When an operator logs in with a token, the failures page shows their group
    log_in(page, deployment, "bob", "/failures")
    reload_until(page, deployment.page("/failures"), "tr[id^=group-] td", "3")
    row = page.locator("tr[id^=group-]")
    assert row.count() == 1 and "gateway" in row.inner_text() and "permanent" in row.inner_text()
    # why, in the gateway's own words, the number masked
    assert "http 400: Number <to> is not a mobile number" in row.inner_text()
    assert ADDRESS not in page.content()
    page.screenshot(path=shots / "failures.png", full_page=True)
    page.goto(deployment.page("/"))
    assert page.locator(".card.bad b").inner_text() == "3"  # failed, on the overview
    # the report's numbers: the three messages, each once, refused under gateway; failures per hour
    total = [cell.inner_text() for cell in page.locator("tr.total td").all()]
    assert total[:6] == ["all", "all", "3", "0", "3", "0"]  # received, delivered, failed, pending
    assert page.locator("table.heat tbody th").all_inner_texts() == ["gateway"]
    page.screenshot(path=shots / "overview.png", full_page=True)

    # (a page left open on one of them while it is failed)
    watching = browser.new_page(viewport={"width": 1280, "height": 800})
    log_in(watching, deployment, "ann", f"/messages/{ids[2]}")
    assert watching.locator("#status").inner_text() == "failed"

    # And retries it once the provider is fixed, after a confirmation with the dry-run count
    deployment.provider.mode = OK
    page.goto(deployment.page("/failures"))
    page.click("tr[id^=group-] a:has-text('Retry')")
    assert page.locator("#dry-run-count").inner_text() == "3"
    assert all(deployment.status(m) == FAILED for m in ids)  # the confirmation changed nothing
    page.fill("input[name=reason]", "gateway fixed")
    page.screenshot(path=shots / "confirm.png", full_page=True)
    page.click("button:has-text('Retry 3 messages')")
    assert page.locator("#done-count").inner_text() == "3"
    bulk_id = page.locator("#bulk-id").inner_text()
    link = page.locator(f"a:has-text('{ids[0]}')").get_attribute("href")
    # The schedule shows them due again, until a delivery process takes them up
    delivered = lambda: all(deployment.status(m) == DELIVERED for m in ids)  # noqa: E731
    reload_until(page, deployment.page("/schedule"), "tbody tr", "gateway", unless=delivered)
    page.screenshot(path=shots / "schedule.png", full_page=True)

    # Then the message page, updating itself, shows it delivered, the retry recorded with the token's name
    page.goto(deployment.page(str(link).removeprefix("/console")))
    page.locator("#status").filter(has_text="delivered").wait_for(timeout=60 * SECONDS)
    page.locator("tr.event.Delivered").wait_for(timeout=10 * SECONDS)
    assert f"by bob: gateway fixed (bulk {bulk_id})" in page.locator("tr.event.RetryRequested").inner_text()
    assert ADDRESS not in page.content()  # no pii: the address masked, the body hidden
    assert page.evaluate("typeof htmx") == "object"  # the vendored script, served by smeg
    page.screenshot(path=shots / "message.png", full_page=True)
    wait_until(lambda: all(deployment.status(m) == DELIVERED for m in ids), 60, 0.2)
    # and the page left open while it was failed turned delivered by itself, without a reload
    watching.locator("#status").filter(has_text="delivered").wait_for(timeout=15 * SECONDS)
    retried = [e for e in deployment.history(ids[1]) if type(e).__name__ == "RetryRequested"]
    assert [(e.requested_by, e.reason, e.bulk_id) for e in retried] == [("bob", "gateway fixed", bulk_id)]
    page.goto(deployment.page("/messages?status=delivered"))
    assert sorted(page.locator("tbody tr td:first-child").all_inner_texts()) == ids
    # and "what failed today" still lists them, delivered since
    page.goto(deployment.page("/messages"))
    page.select_option("select[name=failed_within]", "today")
    page.click("button:has-text('Search')")
    assert sorted(page.locator("tbody tr td:first-child").all_inner_texts()) == ids
    page.screenshot(path=shots / "messages.png", full_page=True)

    # When the operator pauses delivery from the flags page
    page.goto(deployment.page("/flags"))
    paused = page.locator("#flag-delivery-paused")
    paused.locator("input[name=reason]").fill("incident 7")
    paused.locator("button:has-text('Pause delivery')").click()
    assert "true" in paused.locator(".flag").inner_text() and "bob: incident 7" in paused.inner_text()
    page.screenshot(path=shots / "flags.png", full_page=True)
    # Then every process obeys: the consumer goes, and a new request waits in the queue
    wait_until(lambda: any(r.get("by") == "bob" for r in logged(deployment.smeg, "delivery_paused")), 10)
    wait_until(lambda: consumers(deployment.prefix) == 0, 10, message="the consumer cancelled")
    publish_requests(deployment.prefix, ["order-1044-shipped"])
    assert queued(deployment.prefix) == 1 and deployment.status("order-1044-shipped") is None
    page.goto(deployment.page("/"))
    assert "delivery.paused is on" in page.locator(".banner").inner_text()

    # When it resumes, the waiting request is delivered
    page.goto(deployment.page("/flags"))
    paused.locator("input[name=reason]").fill("incident over")
    paused.locator("button:has-text('Resume delivery')").click()
    assert "false" in paused.locator(".flag").inner_text()
    wait_until(lambda: deployment.status("order-1044-shipped") == DELIVERED, 60, 0.2, message="delivered")
    assert any(r.get("by") == "bob" for r in logged(deployment.smeg, "delivery_resumed"))
    assert errors == []
    page.close()


class Attacker:
    """Another origin (same site: 127.0.0.1, another port) whose page posts a form to the console."""

    def __init__(self, target: str) -> None:
        page = (
            f'<form method="post" action="{target}"><input type="hidden" name="value" value="true">'
            '<input type="hidden" name="reason" value="pwned"><button>Win a prize</button></form>'
        ).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def session_of(cookie: dict[str, Any]) -> str:
    """What Flask's signed cookie carries (signed, not encrypted: anyone holding it can read it)."""
    payload = cookie["value"]
    compressed = payload.startswith(".")
    data = payload.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return (zlib.decompress(raw) if compressed else raw).decode()


def test_a_viewer_cannot_act_and_no_change_is_made_without_a_session_and_its_csrf_token(
    deployment: Deployment, browser: Browser
) -> None:
    failed(deployment, ["order-2001-shipped"])
    context = browser.new_context()
    viewer = context.new_page()

    # A viewer logs in (a wrong token first): the group is shown, no Retry or Archive, no flag switch
    viewer.goto(deployment.page("/failures"))
    viewer.fill("input[name=token]", "not-the-secret-of-anyone")
    viewer.click("button:has-text('Log in')")
    assert viewer.locator(".error").inner_text() == "That token is not valid."
    log_in(viewer, deployment, "ann", "/failures")
    reload_until(viewer, deployment.page("/failures"), "tr[id^=group-] td", "1")
    assert viewer.locator("a:has-text('Retry'), a:has-text('Archive')").count() == 0
    assert "may look, not retry" in viewer.locator(".note").inner_text()
    group = (viewer.locator("tr[id^=group-]").get_attribute("id") or "").removeprefix("group-")
    answer = viewer.goto(deployment.page(f"/failures/{group}/retry"))
    assert answer is not None and answer.status == 403
    token = csrf_of(viewer)
    form = {"csrf_token": token, "reason": "let me", "expected": "1"}
    assert post_from(viewer, f"/console/failures/{group}/retry", form) == 403
    assert post_from(viewer, "/console/flags/delivery.paused", form | {"value": "true"}) == 403
    viewer.goto(deployment.page("/flags"))
    assert viewer.locator("form.inline").count() == 0
    viewer.goto(deployment.page("/messages/order-2001-shipped"))
    assert ADDRESS not in viewer.content() and "hidden" in viewer.locator("dd i").inner_text()
    assert deployment.status("order-2001-shipped") == FAILED

    # Its session cookie: HttpOnly, SameSite=Strict, scoped to /console, the name in it and no secret
    [cookie] = context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
        "smeg_console",
        True,
        "Strict",
        "/console",
    )
    carried = json.loads(session_of(dict(cookie)))
    assert carried["name"] == "ann" and SECRETS["ann"] not in json.dumps(carried)

    # Logged out, every page leads to the login form again
    viewer.goto(deployment.page("/"))
    viewer.click("button:has-text('Log out')")
    assert "/console/login" in viewer.url
    viewer.goto(deployment.page("/messages"))
    assert re.search(r"/console/login\?next=", viewer.url)
    context.close()

    # An operator's POST without the session's CSRF token is refused, from its page or another origin
    operator = browser.new_page()
    log_in(operator, deployment, "bob")
    assert post_from(operator, "/console/flags/delivery.paused", {"value": "true", "reason": "x"}) == 403
    assert (
        post_from(operator, "/console/flags/delivery.paused", {"value": "true", "reason": "x"}, "forged")
        == 403
    )
    attacker = Attacker(deployment.page("/flags/delivery.paused"))
    try:
        operator.goto(attacker.url)
        with operator.expect_navigation() as navigation:
            operator.click("button")
        answered = navigation.value
        assert answered is not None and answered.status == 403
    finally:
        attacker.close()
    operator.goto(deployment.page("/flags"))
    assert "false" in operator.locator("#flag-delivery-paused .flag").inner_text()
    assert not logged(deployment.smeg, "delivery_paused")

    # With pii, the address and the body are shown whole
    pii = browser.new_page()
    log_in(pii, deployment, "cyd", "/messages/order-2001-shipped")
    assert ADDRESS in pii.locator("dl.summary").inner_text() and pii.locator("pre.body").inner_text() == "hi"
    operator.close()
    pii.close()


def logged_in(app: Any, who: str, next_page: str = "") -> Any:
    """A test client of ``app`` logged in as ``who``; ``client.went`` is where the login led."""
    client = app.test_client()
    token = re.search(
        r'name="csrf_token" value="([^"]+)"', client.get("/console/login").get_data(as_text=True)
    )
    assert token is not None
    answer = client.post(
        "/console/login", data={"csrf_token": token[1], "token": SECRETS[who], "next": next_page}
    )
    assert answer.status_code == 302
    client.went = answer.headers["Location"]
    return client


def test_sessions_end_with_their_token_or_key_and_login_leads_to_console_pages_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/smeg.db")
    with opened(settings.database_url) as store:
        seed_failed(store, "m-1", permanent=True)  # a retry's confirmation page needs a failed message
    tokens = tokens_from({"SMEG_ADMIN_TOKENS": TOKENS}, {})
    app = create_app(settings, tokens)
    client = logged_in(app, "bob", "/console/messages/m-1/retry")
    assert client.went == "/console/messages/m-1/retry"
    assert client.get(client.went).status_code == 200
    # After logging in, only a page of the console: never another site
    for target in ("//evil.example/console/", "https://evil.example/", "/console/../api/failures"):
        assert logged_in(app, "bob", target).went == "/console/"
    # A session is no credential for the API, which wants its Bearer token
    assert client.get("/api/failures").status_code == 401

    # A token removed from the configuration ends its sessions at their next request
    app.extensions["smeg_console"] = Console(settings, [t for t in tokens if t.name != "bob"])
    gone = client.get("/console/messages/m-1/retry")
    assert gone.status_code == 302 and gone.headers["Location"].startswith("/console/login")

    # Random key: another process (a restart) knows no session; SMEG_ADMIN_SESSION_KEY: it does
    cookie = logged_in(create_app(settings, tokens), "bob").get_cookie("smeg_console", path="/console")
    assert cookie is not None

    def carried_to(other: Any) -> int:
        client = other.test_client()
        client.set_cookie("smeg_console", cookie.value, path="/console")
        status: int = client.get("/console/messages/m-1/retry").status_code
        return status

    assert carried_to(create_app(settings, tokens)) == 302
    monkeypatch.setenv("SMEG_ADMIN_SESSION_KEY", "k" * 32)
    cookie = logged_in(create_app(settings, tokens), "bob").get_cookie("smeg_console", path="/console")
    assert cookie is not None and carried_to(create_app(settings, tokens)) == 200
    monkeypatch.setenv("SMEG_ADMIN_SESSION_KEY", "short")
    with pytest.raises(SettingsError, match="at least 32"):
        create_app(settings, tokens)


def test_an_operator_acknowledges_an_open_alert_from_the_overview_and_a_viewer_cannot(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/smeg.db")
    rule = AlertRule("provider_down", threshold=1, for_=0)
    seen = Observation("provider_down", "gateway", 90.0, True, "gateway down 90 s", {"provider": "gateway"})
    with opened(settings.database_url) as store:
        now = datetime.now(UTC)
        AlertStore(store).change(
            "provider_down", "gateway", lambda a: a.observe(seen, rule, now=now, clear_since=None), now=now
        )
    app = create_app(settings, tokens_from({"SMEG_ADMIN_TOKENS": TOKENS}, {}))
    viewer, operator = logged_in(app, "ann"), logged_in(app, "bob")
    assert "Acknowledge" not in viewer.get("/console/").get_data(as_text=True)
    page = operator.get("/console/").get_data(as_text=True)
    action = re.search(r'action="(/console/alerts/[^"]+/ack)"', page)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert action is not None and csrf is not None
    # A viewer's session may not, even with its own CSRF token; an operator's may
    viewer_csrf = re.search(
        r'name="csrf_token" value="([^"]+)"', viewer.get("/console/flags").get_data(as_text=True)
    )
    assert viewer_csrf is not None
    assert viewer.post(action[1], data={"csrf_token": viewer_csrf[1]}).status_code == 403
    assert operator.post(action[1], data={"csrf_token": csrf[1]}).status_code == 302
    acked = operator.get("/console/").get_data(as_text=True)
    assert "Acknowledge" not in acked and '<td class="acked">bob</td>' in acked
