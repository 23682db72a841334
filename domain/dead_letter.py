"""A message that failed for good as it goes onto the failed queue: its request, ``x-smeg-*`` headers."""

from __future__ import annotations

from domain.message import Message
from domain.request import SendRequest


def failed_request(message: Message) -> SendRequest:
    """The message's original request, as it goes onto the failed queue."""
    return SendRequest(
        message_id=message.message_id,
        channel=message.channel,
        to=message.to,
        body=message.body,
        correlation_id=message.correlation_id,
        sender=message.sender,
        provider=message.provider,
        metadata=dict(message.metadata),
    )


def failure_headers(message: Message) -> tuple[tuple[str, str], ...]:
    """Why and how it failed, as ``x-smeg-*`` headers."""
    return (
        ("x-smeg-reason", message.last_error or ""),
        ("x-smeg-attempts", str(message.attempts)),
        ("x-smeg-permanent", "true" if message.permanent else "false"),
        ("x-smeg-provider", message.last_provider or ""),
    )
