"""The provider adapters against real local HTTP servers (no mocks), and the simulated provider."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from adapters.providers import SimulatedProvider, build_provider
from domain.failures import WITHHELD
from domain.ports import (
    OutboundMessage,
    PermanentDeliveryError,
    ProviderReceipt,
    ProviderUnhealthyError,
    TransientDeliveryError,
)
from smeg_actors.actors.provider_calls import ProviderCalls

PHONE = "+447700900123"
BODY = "Your code is 918273"
SID = "AC0123456789abcdef0123456789abcdef"
TOKEN = "twilio-secret-token"
MESSAGE = OutboundMessage(
    message_id="msg-0001",
    channel="sms",
    to=PHONE,
    sender="ACME",
    body=BODY,
    correlation_id="corr-42",
)


@dataclass
class Recorded:
    """One request as the server saw it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode()).items()}


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: {"id": "prov-1"})
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class FakeServer:
    """A real HTTP server on 127.0.0.1; ``answer`` decides each reply from the request."""

    url: str
    requests: list[Recorded] = field(default_factory=list)
    answer: Callable[[Recorded], Reply] = lambda request: Reply()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = Recorded(self.command, self.path, headers, body)
        fake.requests.append(request)
        reply = fake.answer(request)
        time.sleep(reply.delay)
        raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        for name, value in {"Content-Type": "application/json", **reply.headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    request_queue_size = 1024  # hundreds of connections at once in the concurrency test
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client gave up (timeout test): a broken pipe here is expected


@pytest.fixture
def server() -> Iterator[FakeServer]:
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    fake = FakeServer(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield fake
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


#: One event loop for the module's sends, as ``smeg run`` has one for all its calls (an
#: ``httpx.AsyncClient`` keeps to the loop it was first used on).
LOOP = asyncio.Runner()


@pytest.fixture(scope="module", autouse=True)
def loop() -> Iterator[None]:
    yield
    LOOP.close()


def send(provider: Any, message: OutboundMessage) -> ProviderReceipt:
    result: ProviderReceipt = LOOP.run(provider.send(message))
    return result


@pytest.fixture
def providers() -> Iterator[list[Any]]:
    built: list[Any] = []
    yield built
    for provider in built:
        LOOP.run(provider.aclose())


@pytest.fixture
def http_provider(server: FakeServer, providers: list[Any]) -> Callable[..., Any]:
    def make(**config: Any) -> Any:
        env = config.pop("environ", {})
        provider = build_provider("p1", {"type": "http", "url": f"{server.url}/send", **config}, env)
        providers.append(provider)
        return provider

    return make


def assert_no_pii(error: BaseException) -> None:
    for text in (str(error), getattr(error, "reason", "")):
        assert PHONE not in text and BODY not in text and "918273" not in text
        assert "\n" not in text


# --- http ---------------------------------------------------------------------------------


def test_posts_the_message_as_json_with_idempotency_correlation_and_bearer_token(
    server: FakeServer, http_provider: Callable[..., Any]
) -> None:
    provider = http_provider(token_env="SMEG_TEST_TOKEN", environ={"SMEG_TEST_TOKEN": "s3cret"})

    first = send(provider, MESSAGE)
    second = send(provider, MESSAGE)

    assert first == second == ProviderReceipt("prov-1")
    request = server.requests[0]
    assert (request.method, request.path) == ("POST", "/send")
    assert request.json() == {
        "message_id": "msg-0001",
        "channel": "sms",
        "to": PHONE,
        "from": "ACME",
        "body": BODY,
    }
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-correlation-id"] == "corr-42"
    assert request.headers["authorization"] == "Bearer s3cret"
    keys = [r.headers["idempotency-key"] for r in server.requests]
    assert keys == ["msg-0001", "msg-0001"]


def test_sends_no_authorization_header_without_token_env(
    server: FakeServer, http_provider: Callable[..., Any]
) -> None:
    send(http_provider(), MESSAGE)

    assert "authorization" not in server.requests[0].headers


def test_turns_a_numeric_provider_id_into_a_string_receipt(
    server: FakeServer, http_provider: Callable[..., Any]
) -> None:
    server.answer = lambda request: Reply(202, {"id": 12345})

    assert send(http_provider(), MESSAGE) == ProviderReceipt("12345")


@pytest.mark.parametrize("body", [{}, {"id": ""}, {"id": None}, [1], b"not json"])
def test_fails_permanently_on_2xx_without_a_usable_id(
    server: FakeServer, http_provider: Callable[..., Any], body: Any
) -> None:
    server.answer = lambda request: Reply(200, body)

    with pytest.raises(PermanentDeliveryError) as caught:
        send(http_provider(), MESSAGE)

    assert caught.value.reason == "provider answered 2xx without id"
    assert caught.value.status_code == 200


@pytest.mark.parametrize("status", [408, 425, 429, 500, 503])
def test_retries_after_transient_status_with_retry_after_seconds(
    server: FakeServer, http_provider: Callable[..., Any], status: int
) -> None:
    server.answer = lambda request: Reply(status, {"error": f"{PHONE}: {BODY}"}, {"Retry-After": "7"})

    with pytest.raises(TransientDeliveryError) as caught:
        send(http_provider(), MESSAGE)

    assert caught.value.status_code == status
    assert caught.value.retry_after == 7.0
    assert caught.value.reason == f"http {status}: {WITHHELD}"  # its words quote the body
    assert_no_pii(caught.value)


def test_retries_after_503_with_retry_after_http_date(
    server: FakeServer, http_provider: Callable[..., Any]
) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    server.answer = lambda request: Reply(503, {}, {"Retry-After": when})

    with pytest.raises(TransientDeliveryError) as caught:
        send(http_provider(), MESSAGE)

    assert caught.value.retry_after is not None
    assert 115 <= caught.value.retry_after <= 121


@pytest.mark.parametrize("value", ["soon", "-5", "Thu, 99 Foo 2024 25:00:00 GMT"])
def test_ignores_an_unparseable_retry_after(
    server: FakeServer, http_provider: Callable[..., Any], value: str
) -> None:
    server.answer = lambda request: Reply(429, {}, {"Retry-After": value})

    with pytest.raises(TransientDeliveryError) as caught:
        send(http_provider(), MESSAGE)

    assert caught.value.retry_after is None


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_gives_up_on_client_errors(
    server: FakeServer, http_provider: Callable[..., Any], status: int
) -> None:
    server.answer = lambda request: Reply(status, {"error": f"bad number {PHONE}", "echo": BODY})

    with pytest.raises(PermanentDeliveryError) as caught:
        send(http_provider(), MESSAGE)

    assert caught.value.status_code == status
    assert caught.value.reason == f"http {status}: bad number <to>"
    assert_no_pii(caught.value)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            {"error": {"code": "E12", "message": "Number 447700 900 999 is not a mobile"}},
            "Number <number> is not a mobile",
        ),
        (
            {"detail": "Sender id not registered\nfor this route\x1b[0m"},
            "Sender id not registered for this route [0m",
        ),
        ({"message": "x" * 300}, "x" * 119 + "…"),
        ({"status": "rejected"}, None),
        ("not json", None),
    ],
)
def test_a_refusal_says_in_the_providers_own_words_why_masked_and_cut(
    server: FakeServer, http_provider: Callable[..., Any], answer: Any, reason: str | None
) -> None:
    server.answer = lambda request: Reply(400, answer)

    with pytest.raises(PermanentDeliveryError) as caught:
        send(http_provider(), MESSAGE)

    assert caught.value.reason == "http 400" + (f": {reason}" if reason else "")
    assert_no_pii(caught.value)


def test_retries_after_a_timeout(server: FakeServer, http_provider: Callable[..., Any]) -> None:
    server.answer = lambda request: Reply(delay=0.6)

    started = time.perf_counter()
    with pytest.raises(TransientDeliveryError) as caught:
        send(http_provider(timeout=0.2), MESSAGE)

    assert time.perf_counter() - started < 0.55
    assert caught.value.reason.startswith("timeout after 0.2s")
    assert caught.value.status_code is None
    assert_no_pii(caught.value)


def test_retries_when_the_connection_is_refused(closed_port: int, providers: list[Any]) -> None:
    url = f"http://127.0.0.1:{closed_port}/send"
    provider = build_provider("p1", {"type": "http", "url": url, "timeout": 1}, {})
    providers.append(provider)

    with pytest.raises(TransientDeliveryError) as caught:
        send(provider, MESSAGE)

    assert caught.value.reason == "connect error: ConnectError"
    assert caught.value.status_code is None
    assert_no_pii(caught.value)


def test_hundreds_of_calls_through_provider_calls_are_in_flight_at_once(
    server: FakeServer, http_provider: Callable[..., Any]
) -> None:
    # Given a provider whose every answer takes 0.3 s, and smeg's call loop
    server.answer = lambda request: Reply(body={"id": f"p-{request.headers['idempotency-key']}"}, delay=0.3)
    provider = http_provider()
    calls = ProviderCalls({"p1": provider}, concurrency=400)
    try:
        # When 300 calls go out as one batch
        started = time.perf_counter()
        results = calls.run([("p1", replace(MESSAGE, message_id=f"m-{i}")) for i in range(300)], timeout=10)
        elapsed = time.perf_counter() - started
    finally:
        calls.stop()
    # Then they overlapped (one after another they would take 90 s), each with its own receipt
    assert elapsed < 5, elapsed
    assert [result for result, _ in results] == [ProviderReceipt(f"p-m-{i}") for i in range(300)]
    assert len({r.headers["idempotency-key"] for r in server.requests}) == 300


def test_is_healthy_when_the_health_url_answers_2xx(
    server: FakeServer, http_provider: Callable[..., Any]
) -> None:
    provider = http_provider(health_url=f"{server.url}/health")

    provider.check_health()

    assert (server.requests[0].method, server.requests[0].path) == ("GET", "/health")


def test_is_unhealthy_when_the_health_url_answers_500(
    server: FakeServer, http_provider: Callable[..., Any]
) -> None:
    server.answer = lambda request: Reply(500, {})
    provider = http_provider(health_url=f"{server.url}/health")

    with pytest.raises(ProviderUnhealthyError, match=r"^health check answered http 500$"):
        provider.check_health()


def test_is_healthy_when_the_send_port_accepts_tcp_connections(
    server: FakeServer, http_provider: Callable[..., Any]
) -> None:
    http_provider().check_health()

    assert server.requests == []


def test_is_unhealthy_when_the_send_port_refuses_tcp_connections(
    closed_port: int, providers: list[Any]
) -> None:
    url = f"http://127.0.0.1:{closed_port}/send"
    provider = build_provider("p1", {"type": "http", "url": url}, {})
    providers.append(provider)

    with pytest.raises(ProviderUnhealthyError, match=rf"^tcp connect to 127.0.0.1:{closed_port} failed"):
        provider.check_health()


# --- twilio -------------------------------------------------------------------------------


def twilio_answer(request: Recorded) -> Reply:
    """A fake Twilio that checks what the real one would, and answers like it."""
    expected_auth = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    if request.headers.get("authorization") != expected_auth:
        return Reply(401, {"code": 20003, "message": "Authenticate", "status": 401})
    if request.method == "GET" and request.path == f"/2010-04-01/Accounts/{SID}.json":
        return Reply(200, {"sid": SID, "status": "active"})
    if request.method != "POST" or request.path != f"/2010-04-01/Accounts/{SID}/Messages.json":
        return Reply(404, {"code": 20404, "message": "Not found", "status": 404})
    if request.headers.get("content-type") != "application/x-www-form-urlencoded":
        return Reply(400, {"code": 21620, "message": "bad content type", "status": 400})
    form = request.form()
    if not form.get("To") or not form.get("Body"):
        return Reply(400, {"code": 21604, "message": "'To' is required", "status": 400})
    if not form.get("From") and not form.get("MessagingServiceSid"):
        return Reply(400, {"code": 21603, "message": "'From' is required", "status": 400})
    if not request.headers.get("i-twilio-idempotency-token"):
        return Reply(400, {"code": 99999, "message": "test expects an idempotency token"})
    return Reply(201, {"sid": "SM" + "0" * 32, "status": "queued"})


@pytest.fixture
def twilio(server: FakeServer, providers: list[Any]) -> Callable[..., Any]:
    server.answer = twilio_answer

    def make(**config: Any) -> Any:
        base = {"type": "twilio", "account_sid": SID, "auth_token_env": "TWILIO_TOKEN"}
        provider = build_provider("tw", {**base, "base_url": server.url, **config}, {"TWILIO_TOKEN": TOKEN})
        providers.append(provider)
        return provider

    return make


def test_creates_a_twilio_message_with_basic_auth_form_fields_and_idempotency_token(
    server: FakeServer, twilio: Callable[..., Any]
) -> None:
    receipt = send(twilio(**{"from": "+15005550006"}), MESSAGE)

    assert receipt == ProviderReceipt("SM" + "0" * 32)
    request = server.requests[0]
    assert request.form() == {"To": PHONE, "From": "ACME", "Body": BODY}
    assert request.headers["i-twilio-idempotency-token"] == "msg-0001"
    assert request.headers["x-correlation-id"] == "corr-42"


def test_twilio_uses_the_configured_sender_when_the_message_names_none(
    server: FakeServer, twilio: Callable[..., Any]
) -> None:
    message = OutboundMessage("msg-2", "sms", PHONE, None, BODY, "corr-2")

    send(twilio(**{"from": "+15005550006"}), message)

    assert server.requests[0].form()["From"] == "+15005550006"


def test_twilio_sends_through_the_messaging_service_when_configured(
    server: FakeServer, twilio: Callable[..., Any]
) -> None:
    message = OutboundMessage("msg-3", "sms", PHONE, None, BODY, "corr-3")

    send(twilio(messaging_service_sid="MG123"), message)

    assert server.requests[0].form() == {"To": PHONE, "Body": BODY, "MessagingServiceSid": "MG123"}


def test_twilio_gives_up_locally_when_there_is_no_sender_at_all(
    server: FakeServer, twilio: Callable[..., Any]
) -> None:
    message = OutboundMessage("msg-4", "sms", PHONE, None, BODY, "corr-4")

    with pytest.raises(PermanentDeliveryError, match="no sender"):
        send(twilio(), message)

    assert server.requests == []


def test_twilio_gives_up_on_an_invalid_to_number_21211(
    server: FakeServer, twilio: Callable[..., Any]
) -> None:
    server.answer = lambda request: Reply(
        400, {"code": 21211, "message": f"The 'To' number {PHONE} is not valid.", "status": 400}
    )

    with pytest.raises(PermanentDeliveryError) as caught:
        send(twilio(), MESSAGE)

    assert caught.value.reason == "twilio 21211: The 'To' number <to> is not valid."
    assert caught.value.status_code == 400
    assert_no_pii(caught.value)


def test_twilio_retries_after_too_many_requests_20429_honouring_retry_after(
    server: FakeServer, twilio: Callable[..., Any]
) -> None:
    server.answer = lambda request: Reply(
        429, {"code": 20429, "message": "Too Many Requests", "status": 429}, {"Retry-After": "3"}
    )

    with pytest.raises(TransientDeliveryError) as caught:
        send(twilio(), MESSAGE)

    assert (caught.value.reason, caught.value.status_code) == ("twilio 20429: Too Many Requests", 429)
    assert caught.value.retry_after == 3.0


def test_twilio_retries_after_http_429_without_an_error_code(
    server: FakeServer, twilio: Callable[..., Any]
) -> None:
    server.answer = lambda request: Reply(429, b"slow down")

    with pytest.raises(TransientDeliveryError) as caught:
        send(twilio(), MESSAGE)

    assert (caught.value.reason, caught.value.status_code) == ("twilio http 429", 429)


def test_twilio_retries_after_a_500(server: FakeServer, twilio: Callable[..., Any]) -> None:
    server.answer = lambda request: Reply(500, {"code": 20500, "message": "Internal", "status": 500})

    with pytest.raises(TransientDeliveryError) as caught:
        send(twilio(), MESSAGE)

    assert caught.value.status_code == 500


def test_twilio_retries_a_queue_overflow_30001_even_with_a_4xx_status(
    server: FakeServer, twilio: Callable[..., Any]
) -> None:
    server.answer = lambda request: Reply(400, {"code": 30001, "message": "Queue overflow"})

    with pytest.raises(TransientDeliveryError, match="twilio 30001"):
        send(twilio(), MESSAGE)


def test_twilio_gives_up_on_an_unknown_4xx_code(server: FakeServer, twilio: Callable[..., Any]) -> None:
    server.answer = lambda request: Reply(400, {"code": 21999, "message": "whatever"})

    with pytest.raises(PermanentDeliveryError, match="twilio 21999"):
        send(twilio(), MESSAGE)


def test_twilio_is_healthy_when_the_account_resource_answers(
    server: FakeServer, twilio: Callable[..., Any]
) -> None:
    twilio().check_health()

    assert (server.requests[0].method, server.requests[0].path) == (
        "GET",
        f"/2010-04-01/Accounts/{SID}.json",
    )


def test_twilio_is_unhealthy_with_a_wrong_auth_token(server: FakeServer, providers: list[Any]) -> None:
    server.answer = twilio_answer
    config = {"type": "twilio", "account_sid": SID, "auth_token_env": "T", "base_url": server.url}
    provider = build_provider("tw", config, {"T": "wrong"})
    providers.append(provider)

    with pytest.raises(ProviderUnhealthyError, match="http 401"):
        provider.check_health()


# --- simulated ----------------------------------------------------------------------------


def outcome(provider: Any) -> str:
    try:
        return str(send(provider, MESSAGE).provider_message_id)
    except (TransientDeliveryError, PermanentDeliveryError) as exc:
        return type(exc).__name__


def test_simulated_always_fails_transiently_at_transient_rate_1() -> None:
    provider = build_provider("sim", {"type": "simulated", "transient_rate": 1}, {})

    assert {outcome(provider) for _ in range(50)} == {"TransientDeliveryError"}


def test_simulated_always_fails_permanently_at_permanent_rate_1() -> None:
    provider = build_provider("sim", {"type": "simulated", "permanent_rate": 1}, {})

    assert {outcome(provider) for _ in range(50)} == {"PermanentDeliveryError"}


def test_simulated_delivers_with_sim_receipt_ids_by_default() -> None:
    provider = build_provider("sim", {"type": "simulated"}, {})

    receipts = {outcome(provider) for _ in range(20)}

    assert len(receipts) == 20
    assert all(r.startswith("sim-") and len(r) == 36 for r in receipts)


def test_simulated_applies_its_latency() -> None:
    provider = build_provider("sim", {"type": "simulated", "latency_ms": 50}, {})

    started = time.perf_counter()
    send(provider, MESSAGE)

    assert time.perf_counter() - started >= 0.05


def test_simulated_fails_with_503_only_inside_outage_windows() -> None:
    now = [100.0]
    provider = SimulatedProvider("sim", outages=[(2.0, 6.0), (10.0, 11.0)], clock=lambda: now[0])
    seen = []
    for offset in (0.0, 1.99, 2.0, 5.99, 6.0, 10.5, 11.0):
        now[0] = 100.0 + offset
        try:
            send(provider, MESSAGE)
            seen.append((offset, "ok"))
        except TransientDeliveryError as exc:
            assert (exc.reason, exc.status_code) == ("simulated outage", 503)
            seen.append((offset, "outage"))

    assert [state for _, state in seen] == ["ok", "ok", "outage", "outage", "ok", "outage", "ok"]
    provider.check_health()  # outages never make it unhealthy


def test_simulated_repeats_the_same_sequence_for_the_same_seed() -> None:
    config = {"type": "simulated", "transient_rate": 0.3, "permanent_rate": 0.3, "seed": 7}
    first = build_provider("a", config, {})
    second = build_provider("b", config, {})
    other = build_provider("c", {**config, "seed": 8}, {})

    runs = [[outcome(p) for _ in range(40)] for p in (first, second, other)]

    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert {"TransientDeliveryError", "PermanentDeliveryError"} <= set(runs[0])


def test_simulated_calls_overlap_and_each_gets_its_own_receipt() -> None:
    provider = build_provider("sim", {"type": "simulated", "latency_ms": 20}, {})

    async def fifty() -> list[ProviderReceipt]:
        return list(await asyncio.gather(*(provider.send(MESSAGE) for _ in range(50))))

    started = time.perf_counter()
    receipts = LOOP.run(fifty())

    assert len({r.provider_message_id for r in receipts}) == 50
    assert time.perf_counter() - started < 0.5  # the waits overlap: not serialised by the lock


# --- build_provider -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "smtp"}, "provider p: unknown type 'smtp'"),
        ({}, "provider p: missing key 'type'"),
        ({"type": "http"}, "provider p: missing key 'url'"),
        (
            {"type": "http", "url": "ftp://x"},
            "provider p: key 'url' must be an http:// or https://",
        ),
        ({"type": "http", "url": "http://x", "timeout": 0}, "provider p: key 'timeout' must be"),
        ({"type": "http", "url": "http://x", "timout": 3}, "provider p: unknown key 'timout'"),
        ({"type": "http", "url": "http://x", "token_env": "NOPE"}, "NOPE (token_env) is not set"),
        ({"type": "twilio", "auth_token_env": "T"}, "provider p: missing key 'account_sid'"),
        ({"type": "twilio", "account_sid": "AC1"}, "provider p: missing key 'auth_token_env'"),
        ({"type": "twilio", "account_sid": "AC1", "auth_token": "x"}, "unknown key 'auth_token'"),
        ({"type": "simulated", "transient_rate": 1.5}, "key 'transient_rate' must be a number"),
        ({"type": "simulated", "transient_rate": 0.6, "permanent_rate": 0.6}, "must not exceed 1"),
        ({"type": "simulated", "outages": [[5, 1]]}, "key 'outages' must be a list"),
        ({"type": "simulated", "seed": "x"}, "key 'seed' must be an integer"),
    ],
)
def test_rejects_a_bad_config_with_one_line_naming_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        build_provider("p", config, {})

    assert message in str(caught.value)
    assert str(caught.value).startswith("provider p: ")
    assert "\n" not in str(caught.value)


def test_reads_secrets_only_from_the_environment_mapping(providers: list[Any]) -> None:
    config = {"type": "twilio", "account_sid": "AC1", "auth_token_env": "TWILIO_TOKEN"}

    providers.append(build_provider("p", config, {"TWILIO_TOKEN": "t"}))
    with pytest.raises(ValueError, match=r"^provider p: environment variable TWILIO_TOKEN"):
        build_provider("p", config, {})
