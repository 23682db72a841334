"""Redrive: give failed messages a fresh cycle, from the failed queue (CLI or automatic).

Only non-permanent failures that are still Failed in the store get a ``RetryRequested``; one
already retried or delivered is skipped (the aggregate refuses a second retry), permanent ones
are kept on the queue for an operator. The store decides, so two redrives never double up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka
import structlog

from adapters.event_store import MessageNotFoundError, MessageStore
from adapters.rabbitmq import Topology
from adapters.rabbitmq_failed import FailedQueueReader
from domain.errors import InvalidRequestError
from domain.message import Message
from domain.request import parse_send_request
from smeg_actors.clock import Clock
from smeg_actors.messages import DeliverMessages, ProviderRecovered, Tick, WorkItem
from smeg_actors.supervisor import Children, Supervised

log = structlog.get_logger(__name__)


@dataclass
class RedriveReport:
    """What a redrive did, by outcome."""

    redriven: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    permanent: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    invalid: int = 0

    def summary(self) -> str:
        return (
            f"redriven {len(self.redriven)}, skipped {len(self.skipped)} (not failed any more),"
            f" kept {len(self.permanent)} permanent, {len(self.unknown)} unknown to this store,"
            f" invalid {self.invalid}"
        )


def redrive(
    store: MessageStore,
    reader: FailedQueueReader,
    *,
    clock: Clock,
    limit: int | None = None,
    dry_run: bool = False,
    rate: float | None = None,
    requested_by: str = "redrive",
    on_redriven: Callable[[Message], None] = lambda _m: None,
) -> RedriveReport:
    """Work through the messages in the failed queue now (at most ``limit``); see the module doc."""
    report = RedriveReport()
    budget = reader.depth() if limit is None else min(limit, reader.depth())
    for _ in range(budget):
        entry = reader.get()
        if entry is None:
            break
        try:
            request = parse_send_request(entry.body, correlation_id=entry.correlation_id)
        except InvalidRequestError:
            report.invalid += 1
            reader.requeue_at_tail(entry)
            continue
        if str(entry.headers.get("x-smeg-permanent", "")).lower() == "true":
            report.permanent.append(request.message_id)
            reader.requeue_at_tail(entry)
            continue
        if dry_run:
            report.redriven.append(request.message_id)
            reader.requeue_at_tail(entry)
            continue
        try:
            outcome = store.update(
                Message.create_id(request.message_id),
                lambda m: m.request_retry(requested_by, now=clock()),
            )
        except MessageNotFoundError:
            report.unknown.append(request.message_id)
            reader.requeue_at_tail(entry)
            continue
        if outcome.message is not None:
            report.redriven.append(request.message_id)
            on_redriven(outcome.message)
        else:
            report.skipped.append(request.message_id)
        reader.ack(entry)
        if rate:
            time.sleep(1.0 / rate)
    return report


class RedriverActor(Supervised):
    """Starts a rate-limited redrive when a provider that had exhausted messages delivers again."""

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        store: MessageStore,
        open_reader: Callable[[], FailedQueueReader],
        children: Children,
        clock: Clock,
        rate: float,
        cooldown: float = 60.0,
    ) -> None:
        super().__init__(name, supervisor)
        self.store, self.open_reader, self.children = store, open_reader, children
        self.clock, self.rate, self.cooldown = clock, rate, cooldown
        self.thread: threading.Thread | None = None
        self.last_start = 0.0
        self.total = 0

    def on_receive(self, message: Any) -> Any:
        match message:
            case ProviderRecovered(provider=provider):
                self._maybe_start(provider)
            case Tick():
                pass
            case "redriven":
                return self.total
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def _maybe_start(self, provider: str) -> None:
        busy = self.thread is not None and self.thread.is_alive()
        if busy or time.monotonic() - self.last_start < self.cooldown:
            return
        self.last_start = time.monotonic()
        log.info("auto_redrive_started", provider=provider, rate=self.rate)
        self.thread = threading.Thread(target=self._run, name="smeg-redrive", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            reader = self.open_reader()
        except Exception as exc:
            log.warning("auto_redrive_unavailable", error=str(exc)[:200])
            return
        try:
            report = redrive(
                self.store,
                reader,
                clock=self.clock,
                rate=self.rate,
                requested_by="auto-redrive",
                on_redriven=self._dispatch,
            )
            self.total += len(report.redriven)
            log.info("auto_redrive_finished", summary=report.summary())
        except Exception as exc:
            log.warning("auto_redrive_failed", error=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            reader.close()

    def _dispatch(self, message: Message) -> None:
        self.children.tell("dispatcher", DeliverMessages((WorkItem(message.id),)))


def failed_queue_reader(url: str, prefix: str, heartbeat: int) -> Callable[[], FailedQueueReader]:
    return lambda: FailedQueueReader(url, Topology(prefix), heartbeat=heartbeat)
