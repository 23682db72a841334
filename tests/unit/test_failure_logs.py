"""A message that fails is logged where an operator looks: a warning when its attempts ran out (a
provider outage), an error when the provider refused it for good; each with the reason, the
provider and the message's ids, the number masked and never the body, at every log level."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pykka
import pytest

from adapters.event_store import MessageStore
from domain.message import Message
from domain.request import mask_address
from smeg_actors.actors import worker as worker_module
from smeg_actors.actors.messages import WorkItem
from tests.fakes import FakeProvider
from tests.logcapture import captured_logs, json_lines
from tests.unit.test_worker import LOOPS, POLICY, T0, WAIT, Rig, received

NUMBER = "+441234567890"


def on_last_attempt(**fields: Any) -> Message:
    """Two attempts (of three) failed, the last ten minutes ago: the next one is the last."""
    message = received(T0 - timedelta(hours=1), **fields)
    for at in (T0 - timedelta(minutes=30), T0 - timedelta(minutes=10)):
        message.start_attempt("fake", now=at)
        message.record_transient_failure("http 503", error="E", policy=POLICY, now=at)
    return message


@pytest.fixture(autouse=True)
def stop_call_loops() -> Iterator[None]:
    yield
    while LOOPS:
        LOOPS.pop().stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    store = MessageStore(f"sqlite:///{tmp_path}/s.db")
    yield Rig(store, FakeProvider())
    pykka.ActorRegistry.stop_all(timeout=WAIT)
    store.close()


def logged_lines(
    rig: Rig, level: str, monkeypatch: pytest.MonkeyPatch, *messages: Any
) -> list[dict[str, Any]]:
    """Deliver ``messages`` in one batch with logging configured at ``level``; the JSON lines."""
    with captured_logs(level, worker_module) as stream:
        ids = rig.seed(*messages)
        rig.deliver(rig.worker(), *(WorkItem(i) for i in ids))
    return json_lines(stream)


@pytest.mark.parametrize("level", ["info", "warning"])
def test_a_message_whose_attempts_ran_out_is_a_warning_with_its_reason_and_provider(
    rig: Rig, level: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a message on its last attempt (of three), whose provider is down
    message = on_last_attempt(to=NUMBER)
    rig.provider.scripts[message.message_id] = ["transient"]
    # When
    lines = logged_lines(rig, level, monkeypatch, message)
    # Then
    [line] = [line for line in lines if line["event"] == "attempt_finished"]
    assert (line["level"], line["status"], line["permanent"]) == ("warning", "failed", False)
    assert (line["reason"], line["provider"], line["attempt"]) == ("http 503", "fake", 3)
    assert (line["message_id"], line["correlation_id"]) == (message.message_id, message.correlation_id)
    assert line["to"] == mask_address(NUMBER)
    assert "1234567890" not in json.dumps(lines) and "Your code" not in json.dumps(lines)


@pytest.mark.parametrize("level", ["info", "warning", "error"])
def test_a_permanent_failure_is_an_error_with_its_reason_and_provider(
    rig: Rig, level: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given
    message = received(to=NUMBER)
    rig.provider.scripts[message.message_id] = ["permanent"]
    # When
    lines = logged_lines(rig, level, monkeypatch, message)
    # Then
    [line] = [line for line in lines if line["event"] == "attempt_finished"]
    assert (line["level"], line["status"], line["permanent"]) == ("error", "failed", True)
    assert (line["reason"], line["provider"]) == ("http 400", "fake")
    assert line["message_id"] == message.message_id
    assert "1234567890" not in json.dumps(lines) and "Your code" not in json.dumps(lines)


def test_at_warning_level_a_batch_logs_its_failures_and_nothing_of_the_rest(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a batch during an outage: one delivered, one backing off, one out of attempts
    ok, flaky = received(), received()
    exhausted = on_last_attempt()
    rig.provider.scripts[flaky.message_id] = ["transient"]
    rig.provider.scripts[exhausted.message_id] = ["transient"]
    # When
    lines = logged_lines(rig, "warning", monkeypatch, ok, flaky, exhausted)
    # Then
    assert [(line["event"], line["message_id"]) for line in lines] == [
        ("attempt_finished", exhausted.message_id)
    ]
