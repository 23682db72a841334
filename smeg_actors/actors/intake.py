"""The intake actor: makes each batch of send requests durable, then acks it and dispatches it.

A request is acked only once its Received event is committed. A request whose ``message_id``
was seen before hits the store's uniqueness, is acked and ignored, and is never delivered twice.
Anything else that kept a request from being recorded is logged as an error and the request is
handed back to the broker unacked.

With tracing on, each request has a ``smeg.intake`` span (child of its producer's ``traceparent``)
until it is durable; its work item carries that span's context to the first attempt.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pykka
import structlog

from domain.message import Message
from domain.ports import Change, Delivery, Intake, MessageRepository, StoreUnavailableError
from domain.request import SendRequest, mask_address
from smeg_actors.actors.messages import DeliverMessages, GetCounts, RequestsReceived, WorkItem
from smeg_actors.actors.store_retry import retry_until
from smeg_actors.actors.supervisor import Children, Supervised
from smeg_actors.runtime import metrics, tracing
from smeg_actors.runtime.clock import Clock
from smeg_actors.runtime.logs import message_context

log = structlog.get_logger(__name__)


class IntakeActor(Supervised):
    """Records Received events in batches; see the module docstring."""

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        store: MessageRepository,
        intake: Intake,
        children: Children,
        clock: Clock,
        grace: float,
        on_store_lost: Callable[[str], None],
    ) -> None:
        super().__init__(name, supervisor)
        self.store, self.intake, self.children, self.clock = store, intake, children, clock
        self.grace, self.on_store_lost = grace, on_store_lost
        self.received = 0
        self.duplicates = 0
        self.holding: tuple[Delivery, ...] = ()

    def on_failure(self, *args: Any) -> None:
        super().on_failure(*args)
        if self.holding:
            self.intake.release([d.tag for d in self.holding])

    def on_receive(self, message: Any) -> Any:
        match message:
            case RequestsReceived(deliveries=deliveries):
                self.holding = deliveries
                self._record(deliveries)
                self.holding = ()
            case GetCounts():
                return {"received": self.received, "duplicates": self.duplicates}
            case _:
                log.warning("unknown_message_dropped", message=repr(message))
        return None

    def _record(self, deliveries: tuple[Delivery, ...]) -> None:
        spans = tracing.intake_spans(deliveries)
        try:
            self._record_batch(deliveries, spans)
        finally:
            if spans is not None:
                spans.close()

    def _record_batch(self, deliveries: tuple[Delivery, ...], spans: tracing.IntakeSpans | None) -> None:
        now = self.clock()
        changes = [Change(load=self._receiver(d.request, now)) for d in deliveries]
        try:
            outcomes = retry_until(
                lambda: self.store.commit(changes),
                grace=self.grace,
                on_retry=lambda exc, delay: log.warning("store_write_retried", error=str(exc), in_s=delay),
            )
        except StoreUnavailableError as exc:
            self.on_store_lost(str(exc))
            return
        ready: list[WorkItem] = []
        channels: Tally[tuple[str, ...]] = Tally()
        done: list[int] = []
        unrecorded: list[int] = []
        for delivery, outcome in zip(deliveries, outcomes, strict=True):
            request = delivery.request
            if outcome.message is not None:
                trace = spans.recorded(delivery) if spans is not None else tracing.NO_TRACE
                ready.append(WorkItem(outcome.message.id, outcome.message, trace))
                done.append(delivery.tag)
                channels[(request.channel,)] += 1
            elif outcome.conflict:
                self.duplicates += 1
                done.append(delivery.tag)
                if spans is not None:
                    spans.finished(delivery, "duplicate")
                with message_context(request.message_id, request.correlation_id):
                    log.info("duplicate_request_ignored", to=mask_address(request.to))
            else:
                unrecorded.append(delivery.tag)
                with message_context(request.message_id, request.correlation_id):
                    log.error("request_not_recorded", why=str(outcome.refused or "not found")[:200])
        self.received += len(ready)
        metrics.add(metrics.received, channels)
        self.intake.ack(done)
        if unrecorded:
            # Not durable, so not acked: the broker keeps it (and redelivers it) — never a silent drop.
            self.intake.release(unrecorded)
        if ready:
            self.children.tell("dispatcher", DeliverMessages(tuple(ready)))

    def _receiver(self, request: SendRequest, now: datetime) -> Callable[[], Message]:
        def receive() -> Message:
            return Message.receive(
                message_id=request.message_id,
                channel=request.channel,
                to=request.to,
                body=request.body,
                correlation_id=request.correlation_id,
                now=now,
                sender=request.sender,
                metadata=request.metadata,
                provider=request.provider,
            )

        return receive
