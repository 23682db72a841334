"""No log line carries a phone number, a body, a metadata value or a provider token, even when an
actor holding them crashes: tracebacks are rendered without local variables."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator, Sequence

import pytest
import structlog

from adapters.event_store import Change, Outcome
from domain.ports import Delivery
from domain.request import parse_send_request
from smeg_actors.actors.intake import IntakeActor
from smeg_actors.actors.messages import RequestsReceived
from smeg_actors.actors.supervisor import Children
from tests.logcapture import captured_logs
from tests.waiting import wait_until

NUMBER = "+447700900123"
BODY = "Your one-time code is 918273"
SECRET_META = "passport-GB-5550001"
TOKEN = "sk_live_0123456789abcdefSECRET"
SECRETS = (NUMBER, "447700900123", BODY, "918273", SECRET_META, TOKEN)


@pytest.fixture(params=["json", "console"])
def stream(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    with captured_logs("debug", fmt=request.param) as out:
        yield out


class ExplodingStore:
    """Builds the aggregates (so the frames hold the request), then fails unexpectedly."""

    def commit(self, changes: Sequence[Change]) -> list[Outcome]:
        messages = [change.load() for change in changes]
        token = TOKEN
        raise RuntimeError(f"unexpected store failure with {len(messages)} messages ({len(token)})")


class Intake:
    def __init__(self) -> None:
        self.released: list[int] = []
        self.done = threading.Event()

    def ack(self, tags: Sequence[int]) -> None:
        pass

    def release(self, tags: Sequence[int]) -> None:
        self.released += tags
        self.done.set()


def request_bytes() -> bytes:
    return (
        f'{{"message_id": "m-1", "channel": "sms", "to": "{NUMBER}", "body": "{BODY}",'
        f' "metadata": {{"id": "{SECRET_META}"}}}}'
    ).encode()


def test_an_intake_actor_crash_holding_a_request_logs_no_personal_data(stream: io.StringIO) -> None:
    intake = Intake()
    actor = IntakeActor.start(
        "intake-0",
        None,
        store=ExplodingStore(),
        intake=intake,
        children=Children(),
        clock=lambda: __import__("datetime").datetime.now(__import__("datetime").timezone.utc),
        grace=1.0,
        on_store_lost=lambda _why: None,
    )
    actor.tell(RequestsReceived((Delivery(tag=7, request=parse_send_request(request_bytes())),)))

    assert intake.done.wait(5)
    wait_until(lambda: not actor.is_alive(), 5, 0.01, message="the crashed intake actor is still alive")
    text = stream.getvalue()
    # pykka's own line carries the traceback (smeg's module loggers are cached on first use, so
    # their lines may have gone to an earlier test's stream)
    assert "Unhandled exception in IntakeActor" in text
    assert "unexpected store failure" in text
    for secret in SECRETS:
        assert secret not in text
    assert intake.released == [7]


def test_a_logged_exception_shows_no_local_variables(stream: io.StringIO) -> None:
    def send(to: str, body: str, token: str, metadata: dict[str, str]) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        raise ConnectionError(f"provider unreachable ({len(headers)})")

    try:
        send(NUMBER, BODY, TOKEN, {"id": SECRET_META})
    except ConnectionError:
        structlog.get_logger("smeg_actors.actors.worker").exception("provider_call_crashed")
        logging.getLogger("pykka").error("Unhandled exception in actor", exc_info=True)

    text = stream.getvalue()
    assert text.count("provider unreachable") >= 2
    for secret in SECRETS:
        assert secret not in text
