"""The Message aggregate: one send request's whole lifecycle as events.

Every rule about what may follow what lives here, so that the history of any message read back
from the store is always one the rules allow.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic, resolve_topic

from domain.backoff import BackoffPolicy
from domain.errors import (
    AttemptOutcomePendingError,
    AttemptSupersededError,
    MessageAlreadyFinalError,
    NoAttemptInFlightError,
    NotFailedError,
    RedriveBudgetSpentError,
    RetryNotDueError,
    StillHeldError,
)

#: Fixed namespace of message ids: the same client ``message_id`` always maps to the same aggregate.
MESSAGE_NAMESPACE = UUID("5f0c2b4e-8d1a-4c3e-9b6f-0a7d2e9c4b11")

RECEIVED = "received"
IN_FLIGHT = "in_flight"
BACKED_OFF = "backed_off"
DELIVERED = "delivered"
FAILED = "failed"
HELD = "held"
#: A Failed message a person set aside: out of the failure lists and redrive, kept in history.
ARCHIVED = "archived"

INTERRUPTED = "interrupted"
#: The status code of a provider's "too many requests": its pace, not its failure.
THROTTLED = 429

#: ``requested_by`` of the automatic redriver's retries: the ones its budget counts.
AUTO_REDRIVE = "auto-redrive"


#: Automatic redrive cycles a message may get before it waits for a person (``SMEG_REDRIVE_MAX_CYCLES``).
DEFAULT_REDRIVE_MAX_CYCLES = 3


class Message(Aggregate):
    """A message smeg was asked to deliver, and everything that happened to it since."""

    class Event(Aggregate.Event):
        """Base of every Message event: each carries the request's correlation id."""

        correlation_id: str

    class Received(Event, Aggregate.Created):
        """smeg accepted a send request and made it durable."""

        message_id: str
        channel: str
        to: str
        sender: str | None
        body: str
        metadata: dict[str, str]
        provider: str | None

        def mutate(self, aggregate: Any) -> Any:
            """The library's construction, with its per-event signature filtering spelt out.

            Its generic ``mutate`` inspects both init methods' parameters and filters the event's
            fields for each, on every message received and every one loaded: a third of the cost
            of receiving one. (Same result; the round-trip tests compare whole states.)
            """
            assert aggregate is None
            cls = resolve_topic(self.originator_topic)
            message: Message = cls.__new__(cls)
            message.__base_init__(self.originator_id, self.originator_version, self.timestamp)
            message.__init__(  # type: ignore[misc]
                message_id=self.message_id,
                channel=self.channel,
                to=self.to,
                sender=self.sender,
                body=self.body,
                metadata=self.metadata,
                provider=self.provider,
                correlation_id=self.correlation_id,
            )
            self.apply(message)
            return message

    class Attempted(Event):
        """A delivery attempt through a provider began (``trial``: a half-open circuit's probe,
        which does not count toward the cycle's attempts; absent from events before 2026-12-07)."""

        attempt: int
        provider: str
        trial: bool = False

        def apply(self, aggregate: Message) -> None:
            aggregate.status = IN_FLIGHT
            aggregate.held = None
            aggregate.attempts = self.attempt
            aggregate.trial = self.trial
            aggregate.cycle_attempts += 0 if self.trial else 1
            aggregate.last_provider = self.provider
            aggregate.retry_at = None
            aggregate.attempted_at = self.timestamp

    class BackedOff(Event):
        """An attempt failed transiently; the next one is due at ``retry_at``.

        ``throttled``: a 429 within the cycle's allowance (as many as its attempts): the provider's
        pace, not its failure, so it counts neither as an attempt of the cycle nor toward failover
        (absent, False, from events before 2026-12-07)."""

        attempt: int
        reason: str
        error: str
        status_code: int | None
        latency_ms: float | None
        retry_at: datetime
        delay_seconds: float
        policy: dict[str, Any]
        throttled: bool = False

        def apply(self, aggregate: Message) -> None:
            aggregate.status = BACKED_OFF
            aggregate.retry_at = self.retry_at
            aggregate.last_error = self.reason
            if self.throttled:
                aggregate.cycle_attempts -= 0 if aggregate.trial else 1
                aggregate.throttles += 1
                return
            provider = aggregate.last_provider
            if provider and self.reason != INTERRUPTED and not aggregate.trial:
                aggregate.failures = {**aggregate.failures, provider: aggregate.failures.get(provider, 0) + 1}

    class Delivered(Event):
        """The provider accepted the message."""

        attempt: int
        provider: str
        provider_message_id: str
        latency_ms: float | None

        def apply(self, aggregate: Message) -> None:
            aggregate.status = DELIVERED
            aggregate.provider_message_id = self.provider_message_id

    class Failed(Event):
        """Delivery stopped: a permanent provider error, or the cycle's attempts ran out."""

        attempt: int
        reason: str
        error: str
        status_code: int | None
        permanent: bool

        def apply(self, aggregate: Message) -> None:
            aggregate.status = FAILED
            aggregate.last_error = self.reason
            aggregate.permanent = self.permanent

    class Held(Event):
        """No attempt until ``until``: the provider takes none (circuit open, or disabled).

        Recorded when the message is first held (or held for another reason), not on every look:
        the history explains the wait. Holding counts no attempt and exhausts nothing.
        """

        provider: str
        until: datetime
        reason: str

        def apply(self, aggregate: Message) -> None:
            aggregate.status = HELD
            aggregate.retry_at = self.until
            aggregate.held = (self.provider, self.reason)

    class RetryRequested(Event):
        """An operator or the redrive started a fresh cycle of attempts on a Failed (or archived)
        message; ``bulk_id`` names the bulk retry it was part of."""

        requested_by: str
        reason: str = ""
        bulk_id: str | None = None

        def apply(self, aggregate: Message) -> None:
            aggregate.status = RECEIVED
            aggregate.cycle_attempts = 0
            aggregate.failures = {}
            aggregate.throttles = 0
            aggregate.retry_at = None
            aggregate.permanent = False
            if self.requested_by == AUTO_REDRIVE:
                aggregate.automatic_retries += 1
            else:
                aggregate.automatic_retries = 0

    class Archived(Event):
        """A person set a Failed message aside (it will never succeed as it is): it leaves the
        failure lists and redrive; a retry brings it back."""

        by: str
        reason: str

        def apply(self, aggregate: Message) -> None:
            aggregate.status = ARCHIVED

    def __init__(
        self,
        *,
        message_id: str,
        channel: str,
        to: str,
        sender: str | None,
        body: str,
        metadata: dict[str, str],
        provider: str | None,
        correlation_id: str,
    ) -> None:
        self.message_id = message_id
        self.channel = channel
        self.to = to
        self.sender = sender
        self.body = body
        self.metadata = metadata
        self.provider = provider
        self.correlation_id = correlation_id
        self.status = RECEIVED
        self.attempts = 0
        self.cycle_attempts = 0
        self.retry_at: datetime | None = None
        self.attempted_at: datetime | None = None
        self.last_provider: str | None = None
        self.last_error: str | None = None
        self.permanent = False
        self.provider_message_id: str | None = None
        #: Automatic redrives since a person last retried it. Folded from the history, so the
        #: redriver's budget holds across restarts and processes, and a person's retry resets it.
        self.automatic_retries = 0
        #: (provider, reason) while held; whether the latest attempt is a half-open trial.
        self.held: tuple[str, str] | None = None
        self.trial = False
        #: This cycle's transient failures by provider (trials and interruptions aside): after
        #: ``failover_after`` of them a message moves to its next provider (``domain.routing``).
        self.failures: dict[str, int] = {}
        #: This cycle's 429s that were not counted (at most as many as the cycle's attempts).
        self.throttles = 0

    @staticmethod
    def create_id(message_id: str) -> UUID:
        """The aggregate id of a client ``message_id`` (the idempotency key)."""
        return uuid5(MESSAGE_NAMESPACE, message_id)

    @classmethod
    def receive(
        cls,
        *,
        message_id: str,
        channel: str,
        to: str,
        body: str,
        correlation_id: str,
        now: datetime,
        sender: str | None = None,
        metadata: dict[str, str] | None = None,
        provider: str | None = None,
    ) -> Message:
        """Record a new send request.

        What ``Aggregate._create`` does (an event of version 1 for the class's topic, the aggregate
        built by it, the event pending), without its per-call checks for ids it must create or
        topics it must look up: the id is always ``create_id(message_id)``.
        """
        event = cls.Received(  # type: ignore[call-arg]  # (fields made by eventsourcing's metaclass)
            originator_topic=_MESSAGE_TOPIC,
            originator_id=cls.create_id(message_id),
            originator_version=cls.INITIAL_VERSION,
            timestamp=now,
            message_id=message_id,
            channel=channel,
            to=to,
            sender=sender,
            body=body,
            metadata=dict(metadata or {}),
            provider=provider,
            correlation_id=correlation_id,
        )
        message: Message = event.mutate(None)
        message.pending_events.append(event)
        return message

    @property
    def is_final(self) -> bool:
        """Delivered, or Failed (or archived) and not yet retried."""
        return self.status in (DELIVERED, FAILED, ARCHIVED)

    def due_at(self, stale_after: float) -> datetime | None:
        """When this message should next be looked at; None once it is final.

        Backed off: at ``retry_at``. In flight: when the attempt turns stale (its process may have
        died). Received or retried: at once (its creation time, which is past).
        """
        if self.status in (BACKED_OFF, HELD):
            return self.retry_at
        if self.status == IN_FLIGHT and self.attempted_at is not None:
            return self.attempted_at + timedelta(seconds=stale_after)
        if self.is_final:
            return None
        return self.created_on

    def check_due(self, now: datetime) -> None:
        """Refuse (``RetryNotDueError``) before a backoff's ``retry_at``: neither an attempt nor a
        hold may cut it short (a held message waits for its provider, not the clock)."""
        if self.retry_at is not None and now < self.retry_at and self.status != HELD:
            raise RetryNotDueError(f"retry is due at {self.retry_at.isoformat()}")

    def start_attempt(self, provider: str, *, now: datetime, trial: bool = False) -> None:
        """Record that an attempt begins now; refused while one is in flight or before ``retry_at``."""
        self._check_not_final()
        if self.status == IN_FLIGHT:
            raise AttemptOutcomePendingError(f"attempt {self.attempts} has no outcome yet")
        self.check_due(now)
        self._trigger(self.Attempted, now, attempt=self.attempts + 1, provider=provider, trial=trial)

    def hold(self, provider: str, *, until: datetime, reason: str, now: datetime) -> None:
        """Wait for ``provider`` instead of attempting; refused (``StillHeldError``) when already
        held by it for the same reason, so a message waiting 20 minutes has one ``Held``."""
        self._check_not_final()
        if self.status == IN_FLIGHT:
            raise AttemptOutcomePendingError(f"attempt {self.attempts} has no outcome yet")
        self.check_due(now)
        if self.held == (provider, reason):
            raise StillHeldError(f"held for {provider}: {reason}")
        self._trigger(self.Held, now, provider=provider, until=until, reason=reason)

    def record_delivery(
        self,
        provider_message_id: str,
        *,
        now: datetime,
        latency_ms: float | None = None,
        attempt: int | None = None,
    ) -> None:
        """The provider accepted the message in flight (``attempt``: the one that was answered)."""
        self._check_in_flight(attempt)
        self._trigger(
            self.Delivered,
            now,
            attempt=self.attempts,
            provider=self.last_provider or "",
            provider_message_id=provider_message_id,
            latency_ms=latency_ms,
        )

    def record_permanent_failure(
        self,
        reason: str,
        *,
        error: str,
        now: datetime,
        status_code: int | None = None,
        attempt: int | None = None,
    ) -> None:
        """The provider refused for good: fail now, without further attempts."""
        self._check_in_flight(attempt)
        self._fail(reason, error, status_code, now, permanent=True)

    def record_transient_failure(
        self,
        reason: str,
        *,
        error: str,
        policy: BackoffPolicy,
        now: datetime,
        status_code: int | None = None,
        latency_ms: float | None = None,
        retry_after: float | None = None,
        rng: random.Random | None = None,
        attempt: int | None = None,
    ) -> None:
        """Back off by the policy, or fail as exhausted when the cycle's attempts are spent.

        A 429 (the provider's pace, not its failure) backs off by its Retry-After and, for as many
        429s in a cycle as it has attempts, counts neither toward them nor toward failover; a
        provider that answers nothing but 429 exhausts a message after twice its attempts."""
        self._check_in_flight(attempt)
        throttled = status_code == THROTTLED and self.throttles < policy.max_attempts
        if not throttled and policy.exhausted(self.cycle_attempts):
            self._fail(reason, error, status_code, now, permanent=False)
            return
        # (a failed trial of a message never attempted in this cycle backs off as a first attempt)
        delay = policy.delay(max(self.cycle_attempts, 1), retry_after=retry_after, rng=rng)
        self._back_off(reason, error, status_code, latency_ms, delay, policy, now, throttled=throttled)

    def record_interruption(self, *, policy: BackoffPolicy, now: datetime) -> None:
        """Close an attempt whose outcome was lost with its process, so the history says so.

        The next attempt is due at once (the provider has the same idempotency key); the lost
        attempt still counts toward the cycle's limit.
        """
        self._check_in_flight()
        if policy.exhausted(self.cycle_attempts):
            self._fail(INTERRUPTED, "Interrupted", None, now, permanent=False)
            return
        self._back_off(INTERRUPTED, "Interrupted", None, None, 0.0, policy, now)

    def request_retry(
        self,
        requested_by: str,
        *,
        now: datetime,
        reason: str = "",
        bulk_id: str | None = None,
        archived_too: bool = False,
    ) -> None:
        """Start a fresh cycle on a Failed message; its first attempt is due at once. An archived
        one only when a person asks for it by name (``archived_too``): redrive leaves it be."""
        if self.status == DELIVERED:
            raise MessageAlreadyFinalError("message is already delivered")
        if self.status != FAILED and not (archived_too and self.status == ARCHIVED):
            raise NotFailedError(f"message is {self.status}, not failed")
        self._trigger(self.RetryRequested, now, requested_by=requested_by, reason=reason, bulk_id=bulk_id)

    def archive(self, by: str, *, reason: str, now: datetime) -> None:
        """Set a Failed message aside (``Archived``)."""
        if self.status != FAILED:
            raise NotFailedError(f"message is {self.status}, not failed")
        self._trigger(self.Archived, now, by=by, reason=reason)

    def request_automatic_retry(self, *, budget: int, now: datetime) -> None:
        """The automatic redriver's retry: refused once ``budget`` of them came in a row (a
        person's retry resets the count), so a message that never delivers waits for a person."""
        if self.status == FAILED and self.automatic_retries >= budget:
            raise RedriveBudgetSpentError(self.automatic_retries)
        self.request_retry(AUTO_REDRIVE, now=now)

    def _back_off(
        self,
        reason: str,
        error: str,
        status_code: int | None,
        latency_ms: float | None,
        delay: float,
        policy: BackoffPolicy,
        now: datetime,
        *,
        throttled: bool = False,
    ) -> None:
        self._trigger(
            self.BackedOff,
            now,
            attempt=self.attempts,
            reason=reason,
            error=error,
            status_code=status_code,
            latency_ms=latency_ms,
            retry_at=now + timedelta(seconds=delay),
            delay_seconds=delay,
            policy=policy.as_dict(),
            throttled=throttled,
        )

    def _fail(
        self, reason: str, error: str, status_code: int | None, now: datetime, *, permanent: bool
    ) -> None:
        self._trigger(
            self.Failed,
            now,
            attempt=self.attempts,
            reason=reason,
            error=error,
            status_code=status_code,
            permanent=permanent,
        )

    def _trigger(self, event_class: type[Message.Event], now: datetime, **fields: Any) -> None:
        self.trigger_event(event_class, timestamp=now, correlation_id=self.correlation_id, **fields)

    def _check_not_final(self) -> None:
        if self.is_final:
            raise MessageAlreadyFinalError(f"message is already {self.status}")

    def _check_in_flight(self, attempt: int | None = None) -> None:
        """An outcome needs an attempt in flight, and (when named) the very attempt it answers:
        a late answer to an attempt another process closed as interrupted must not close the next."""
        self._check_not_final()
        if attempt is not None and attempt != self.attempts:
            raise AttemptSupersededError(f"attempt {attempt} was closed; attempt {self.attempts} followed it")
        if self.status != IN_FLIGHT:
            raise NoAttemptInFlightError(f"message is {self.status}, no attempt in flight")


_MESSAGE_TOPIC = get_topic(Message)
