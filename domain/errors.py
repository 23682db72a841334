"""Domain exceptions: every rule the Message aggregate refuses has a type of its own."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every rule the domain refuses."""


class InvalidTransitionError(DomainError):
    """The event does not follow from the message's current state."""


class MessageAlreadyFinalError(InvalidTransitionError):
    """Nothing may follow Delivered, and only RetryRequested may follow Failed."""


class AttemptOutcomePendingError(InvalidTransitionError):
    """An attempt was started while the previous one has no recorded outcome."""


class NoAttemptInFlightError(InvalidTransitionError):
    """An outcome was recorded but no attempt is waiting for one."""


class AttemptSupersededError(InvalidTransitionError):
    """An outcome arrived for an attempt that was closed (deemed interrupted) and followed by another."""


class RetryNotDueError(InvalidTransitionError):
    """An attempt was started before the message's ``retry_at``."""


class NotFailedError(InvalidTransitionError):
    """A retry was requested for a message that has not Failed."""


class RedriveBudgetSpentError(InvalidTransitionError):
    """The automatic redriver has already given this message every cycle it may."""

    def __init__(self, cycles: int) -> None:
        super().__init__(f"{cycles} automatic redrives already")
        self.cycles = cycles


class InvalidRequestError(DomainError):
    """A send request breaks the rules of the edge (field, size, format)."""


class CircuitAlreadyOpenError(InvalidTransitionError):
    """A circuit was opened while open: another process or node opened it first."""


class CircuitNotOpenError(InvalidTransitionError):
    """Only an open circuit turns half-open."""


class OpenPeriodNotOverError(InvalidTransitionError):
    """A circuit turns half-open only once its open period is over."""


class CircuitNotHalfOpenError(InvalidTransitionError):
    """Only a half-open circuit closes (after its trials succeeded)."""


class ProviderAlreadyDisabledError(InvalidTransitionError):
    """The provider was disabled already (by the person it names)."""


class ProviderNotDisabledError(InvalidTransitionError):
    """Only a disabled provider can be enabled."""


class StillHeldError(InvalidTransitionError):
    """The message is already held by this provider for this reason (one Held per wait)."""
