"""The worker actor: runs one attempt per message of its batch, all calls in flight at once.

For a batch: record every Attempted in one transaction, call the providers concurrently on the
process's provider-call loop, record every outcome in one transaction. A crash mid-batch is reported
(``Recover``) so the messages are looked at again; none is lost.

With tracing on, each attempt has a ``smeg.attempt`` span under its intake's; the trace of a message
not finished is remembered for its next attempt (``tracing.remember_retry``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pykka
import structlog

from domain.backoff import BackoffPolicy
from domain.dead_letter import failed_request, failure_headers
from domain.errors import AttemptOutcomePendingError, RetryNotDueError, StillHeldError
from domain.message import BACKED_OFF, DELIVERED, FAILED, HELD, IN_FLIGHT, INTERRUPTED, Message
from domain.ports import (
    Change,
    Hold,
    MessageRepository,
    OutboundMessage,
    Outcome,
    PermanentDeliveryError,
    Provider,
    ProviderGate,
    ProviderReceipt,
    StoreUnavailableError,
    Trial,
)
from domain.request import mask_address
from domain.routing import RoutingPolicy
from smeg_actors.actors.messages import (
    BatchFinished,
    DeliverBatch,
    ProviderRecovered,
    PublishFailed,
    Recover,
    ScheduleRetry,
    WorkItem,
)
from smeg_actors.actors.provider_calls import ProviderCalls, Result, outcome_of
from smeg_actors.actors.provider_health import NO_HOLDS
from smeg_actors.actors.store_retry import retry_until
from smeg_actors.actors.supervisor import Children, Supervised
from smeg_actors.runtime import metrics, tracing
from smeg_actors.runtime.clock import Clock
from smeg_actors.runtime.logs import message_context

log = structlog.get_logger(__name__)


class WorkerActor(Supervised):
    """Attempts deliveries; see the module docstring.

    Args:
        store: the event store.
        providers: configured providers by name.
        default_provider: used when a request names none and no route is given.
        policy: the backoff policy.
        calls: the process's provider-call loop.
        gate: whether a provider takes attempts now; a message for one that does not is held.
        routing: which provider each attempt goes to (pinned, routes, fallbacks).
        children: refs of the dispatcher, scheduler, publisher and redriver.
        clock: UTC now.
        stale_after: an attempt older than this with no outcome is deemed interrupted.
        call_timeout: the longest a provider call may take before it counts as a timeout.
        grace: seconds of store failures tolerated before ``on_store_lost``.
        on_store_lost: called when the store stays unavailable past the grace.
    """

    def __init__(
        self,
        name: str,
        supervisor: pykka.ActorRef[Any] | None,
        *,
        store: MessageRepository,
        providers: dict[str, Provider],
        default_provider: str,
        policy: BackoffPolicy,
        calls: ProviderCalls,
        gate: ProviderGate = NO_HOLDS,
        routing: RoutingPolicy | None = None,
        children: Children,
        clock: Clock,
        stale_after: float,
        call_timeout: float,
        grace: float,
        on_store_lost: Callable[[str], None],
    ) -> None:
        super().__init__(name, supervisor)
        self.store, self.providers, self.default_provider = store, providers, default_provider
        self.policy, self.calls, self.children, self.clock = policy, calls, children, clock
        self.stale_after, self.call_timeout = stale_after, call_timeout
        self.grace, self.on_store_lost = grace, on_store_lost
        self.gate = gate
        self.routing = routing or RoutingPolicy(default_provider, providers=frozenset(providers))
        #: The holds of the batch being begun, by message (for the scheduler's next look).
        self.holds: dict[UUID, Hold] = {}
        self.current: tuple[WorkItem, ...] = ()
        #: The attempt spans of the batch being delivered, while tracing is on.
        self.spans: tracing.AttemptSpans | None = None

    def on_receive(self, message: Any) -> None:
        match message:
            case DeliverBatch(items=items):
                self.current = items
                self.spans = tracing.attempt_spans(items)
                try:
                    self._deliver(items)
                finally:
                    self.current = ()
                    if self.spans is not None:
                        self.spans.close()
                        self.spans = None
                self.children.tell("dispatcher", BatchFinished(tuple(i.id for i in items)))
            case _:
                log.warning("unknown_message_dropped", message=repr(message))

    def _deliver(self, items: tuple[WorkItem, ...]) -> None:
        now = self.clock()
        self.holds.clear()
        started = self._commit([self._begin_change(item, now) for item in items])
        if started is None:
            return
        attempts = []
        for item, outcome in zip(items, started, strict=True):
            if outcome.message is not None and outcome.message.status == IN_FLIGHT:
                attempts.append(outcome.message)
            else:
                self._not_started(item, outcome)
        if not attempts:
            return
        results = self._call_all(attempts)
        now = self.clock()
        outcomes: Tally[tuple[str, ...]] = Tally()
        for message, (result, ms) in zip(attempts, results, strict=True):
            outcomes[(message.last_provider or "", outcome_of(result))] += 1
            self._record(message, result, ms, now)
        metrics.add(metrics.attempts, outcomes)
        finished = self._commit(
            [self._outcome_change(m, r, ms, now) for m, (r, ms) in zip(attempts, results, strict=True)]
        )
        if finished is not None:
            for outcome in finished:
                self._after(outcome)

    def _record(self, message: Message, result: Result, latency_ms: float, now: datetime) -> None:
        """Count an attempt's outcome, and tell the gate (a 429's Retry-After included)."""
        provider = message.last_provider or ""
        metrics.child(metrics.provider_call_seconds, provider).observe(latency_ms / 1000)
        transient = not isinstance(result, ProviderReceipt | PermanentDeliveryError)
        self.gate.record(
            message.last_provider or "",
            transient=transient,
            trial=message.trial,
            now=now,
            status_code=getattr(result, "status_code", None),
            retry_after=getattr(result, "retry_after", None),
        )

    def _begin_change(self, item: WorkItem, now: datetime) -> Change:
        def begin(message: Message) -> None:
            if message.status == IN_FLIGHT:
                stale_at = (message.attempted_at or now) + timedelta(seconds=self.stale_after)
                if now < stale_at:
                    raise AttemptOutcomePendingError(f"attempt in flight until {stale_at}")
                message.record_interruption(policy=self.policy, now=now)
                if message.status == FAILED:
                    return
            message.check_due(now)  # before the gate: a slot of its pace is not taken in vain
            choice = self.routing.choose(
                pinned=message.provider,
                channel=message.channel,
                key=message.id,
                failures=message.failures,
                admit=lambda provider: self.gate.admit(provider, now, message.id),
            )
            admission = choice.admission
            if not isinstance(admission, Hold):
                message.start_attempt(choice.provider, now=now, trial=isinstance(admission, Trial))
                return
            self.holds[item.id] = admission
            message.hold(choice.provider, until=admission.until, reason=admission.reason, now=now)

        return Change(load=lambda: self.store.get(item.id), apply=begin, cached=item.message)

    def _not_started(self, item: WorkItem, outcome: Outcome) -> None:
        if isinstance(outcome.refused, StillHeldError):  # held already: look again when the hold ends
            self.children.tell("scheduler", ScheduleRetry(item.id, self.holds[item.id].until))
        elif outcome.message is not None and outcome.message.status == HELD:
            assert outcome.message.retry_at is not None
            metrics.child(metrics.held, outcome.message.held[0] if outcome.message.held else "").inc()
            self._log_held(outcome.message)
            self.children.tell("scheduler", ScheduleRetry(item.id, outcome.message.retry_at))
        elif isinstance(outcome.refused, RetryNotDueError | AttemptOutcomePendingError):
            self.children.tell("scheduler", Recover((item.id,)))
        elif outcome.message is not None and outcome.message.status == FAILED:
            self._after(outcome)
        elif outcome.conflict:
            log.info("attempt_taken_by_another_writer", aggregate_id=str(item.id))

    def _call_all(self, messages: list[Message]) -> list[tuple[Result, float]]:
        """Every call of the batch at once on the provider-call loop; one wait for all of them."""
        calls = [(m.last_provider or self.default_provider, _outbound(m)) for m in messages]
        parents = self.spans.begin(messages) if self.spans is not None else None
        metrics.messages_in_flight.inc(len(calls))  # per batch: a gauge write per call would cost
        try:
            if parents is None:
                return self.calls.run(calls, timeout=self.call_timeout)
            return self.calls.run(calls, timeout=self.call_timeout, parents=parents)
        finally:
            metrics.messages_in_flight.dec(len(calls))

    def _outcome_change(self, message: Message, result: Result, latency_ms: float, now: datetime) -> Change:
        attempt = message.attempts  # the attempt this answer belongs to, whatever the store holds now

        def record(target: Message) -> None:
            if isinstance(result, ProviderReceipt):
                target.record_delivery(
                    result.provider_message_id, now=now, latency_ms=latency_ms, attempt=attempt
                )
            elif isinstance(result, PermanentDeliveryError):
                target.record_permanent_failure(
                    result.reason,
                    error=type(result).__name__,
                    now=now,
                    status_code=result.status_code,
                    attempt=attempt,
                )
            else:
                target.record_transient_failure(
                    result.reason,
                    error=type(result).__name__,
                    policy=self.policy,
                    now=now,
                    status_code=result.status_code,
                    latency_ms=latency_ms,
                    retry_after=result.retry_after,
                    attempt=attempt,
                )

        return Change(load=lambda: self.store.get(message.id), apply=record, cached=message)

    def _after(self, outcome: Outcome) -> None:
        message = outcome.message
        if message is None:
            log.warning("outcome_not_recorded", refused=str(outcome.refused), conflict=outcome.conflict)
            return
        if self.spans is not None:
            self.spans.settle(message)
        # Binding the ids costs more than the line itself: skip both when the line's level is off.
        level = _finished_level(message)
        if log.is_enabled_for(level):
            self._log_finished(message, level)
        if message.status == BACKED_OFF and message.retry_at is not None:
            self.children.tell("scheduler", ScheduleRetry(message.id, message.retry_at))
        elif message.status == FAILED:
            reason = "permanent" if message.permanent else "exhausted"
            metrics.child(metrics.failed, message.last_provider or "", reason).inc()
            self.children.tell("publisher", PublishFailed(failed_request(message), failure_headers(message)))
        elif message.status == DELIVERED:
            waited = (self.clock() - message.created_on).total_seconds()
            provider = message.last_provider or ""
            metrics.child(metrics.delivery_seconds, provider, message.channel).observe(waited)
        if message.status == DELIVERED and message.attempts > 1 and message.last_error != INTERRUPTED:
            self.children.tell_quietly("redriver", ProviderRecovered(message.last_provider or ""))

    @staticmethod
    def _log_finished(message: Message, level: int) -> None:
        failure = {"reason": message.last_error, "permanent": message.permanent}
        with message_context(message.message_id, message.correlation_id):
            log.log(
                level,
                "attempt_finished",
                status=message.status,
                attempt=message.attempts,
                provider=message.last_provider,
                to=mask_address(message.to),
                error=message.last_error if message.status != DELIVERED else None,
                retry_at=message.retry_at.isoformat() if message.retry_at else None,
                **(failure if message.status == FAILED else {}),
            )

    @staticmethod
    def _log_held(message: Message) -> None:
        """Once per wait (a message's first Held for a reason): the same line as an outcome's."""
        assert message.held is not None and message.retry_at is not None
        with message_context(message.message_id, message.correlation_id):
            log.info(
                "attempt_held",
                provider=message.held[0],
                reason=message.held[1],
                until=message.retry_at.isoformat(),
                attempts=message.attempts,
            )

    def _commit(self, changes: list[Change]) -> list[Outcome] | None:
        began = time.monotonic()
        try:
            result: list[Outcome] = retry_until(
                lambda: self.store.commit(changes),
                grace=self.grace,
                on_retry=lambda exc, delay: log.warning("store_write_retried", error=str(exc), in_s=delay),
            )
            metrics.store_write_seconds.observe(time.monotonic() - began)
            return result
        except StoreUnavailableError as exc:
            self.on_store_lost(str(exc))
            return None


def _finished_level(message: Message) -> int:
    """Failed is what an operator must hear of: a warning when the attempts ran out (a provider
    outage looks like this), an error when the provider refused for good; the rest is info."""
    if message.status != FAILED:
        return logging.INFO
    return logging.ERROR if message.permanent else logging.WARNING


def _outbound(message: Message) -> OutboundMessage:
    return OutboundMessage(
        message_id=message.message_id,
        channel=message.channel,
        to=message.to,
        sender=message.sender,
        body=message.body,
        correlation_id=message.correlation_id,
    )
