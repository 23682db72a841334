"""A late answer to an attempt another process closed as interrupted is refused, not recorded
against the attempt that followed it (found by scripts/chaos.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.event_store import Change, MessageStore
from domain.backoff import BackoffPolicy
from domain.errors import AttemptSupersededError
from domain.message import IN_FLIGHT, Message
from domain.ports import ProviderReceipt, TransientDeliveryError
from smeg_actors.actors.worker import WorkerActor

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
POLICY = BackoffPolicy(initial=0.2, factor=2, max_delay=2, max_attempts=30)


def superseded(tmp_path: Path) -> tuple[MessageStore, Message]:
    """Process A's copy of attempt 1, after process B closed it and began attempt 2."""
    store = MessageStore(f"sqlite:///{tmp_path}/s.db")
    receive = lambda: Message.receive(  # noqa: E731
        message_id="m-1", channel="sms", to="+447700900123", body="hi", correlation_id="c", now=T0
    )
    store.commit([Change(load=receive)])
    load = lambda: store.get_by_message_id("m-1")  # noqa: E731
    [started] = store.commit([Change(load=load, apply=lambda m: m.start_attempt("p", now=T0))])
    assert started.message is not None

    def interrupt_and_start(message: Message) -> None:
        later = T0 + timedelta(seconds=60)
        message.record_interruption(policy=POLICY, now=later)
        message.start_attempt("p", now=later)

    store.commit([Change(load=load, apply=interrupt_and_start)])
    return store, started.message


@pytest.mark.parametrize(
    "answer", [ProviderReceipt("receipt-of-attempt-1"), TransientDeliveryError("http 503", status_code=503)]
)
def test_a_late_answer_to_a_closed_attempt_leaves_the_next_attempt_in_flight(
    tmp_path: Path, answer: Any
) -> None:
    store, seen_by_a = superseded(tmp_path)
    worker = SimpleNamespace(store=store, policy=POLICY)

    change = WorkerActor._outcome_change(worker, seen_by_a, answer, 5.0, T0 + timedelta(seconds=61))  # type: ignore[arg-type]
    [outcome] = store.commit([change])

    assert isinstance(outcome.refused, AttemptSupersededError)
    current = store.get_by_message_id("m-1")
    assert (current.status, current.attempts) == (IN_FLIGHT, 2)
    # process B's own answer to attempt 2 is still recorded
    [mine] = store.commit(
        [
            Change(
                load=lambda: store.get_by_message_id("m-1"),
                apply=lambda m: m.record_delivery("b", now=T0, attempt=2),
            )
        ]
    )
    assert mine.message is not None and mine.message.provider_message_id == "b"
    store.close()
